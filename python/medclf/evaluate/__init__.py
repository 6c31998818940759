"""Metrics with intervals and everything that scores prediction files: report, compare, calibration, conformal sets, ensembles, reliability. No torch."""
