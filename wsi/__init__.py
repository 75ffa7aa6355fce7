"""Whole-slide image pipeline: read slides with MONAI ``WSIReader``, tissue mask, patch grid, patch datasets.

Slides are tiled into patch grids; later steps distil each slide into a small synthetic bag.
"""
