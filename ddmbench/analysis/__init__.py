"""Analyses of a trained DDM: why sparse routing wins on quality while the full ensemble is the more stable sampler."""
