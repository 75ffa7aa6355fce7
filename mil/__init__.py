"""Slide-level multiple-instance learning: CLAM-SB/MB, DSMIL, TransMIL and mean/max/ABMIL baselines."""
