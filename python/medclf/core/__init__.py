"""Contracts and plain I/O every layer shares: errors, schema strings, atomic files, splits.csv, run folders, predictions files, provenance. No torch."""
