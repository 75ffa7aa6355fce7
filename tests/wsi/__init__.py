"""Tests of the wsi package (a package, so that module names do not clash with other test folders)."""
