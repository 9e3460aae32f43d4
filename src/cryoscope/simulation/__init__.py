"""Synthetic particle datasets from maps or atomic models, with ground truth."""
