"""Datasets before training: leakage-free partitions, duplicate detection and review, folder layouts, demo data."""
