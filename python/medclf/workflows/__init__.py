"""Stages run together: studies, cross-validation, sweeps, the demo, the seed 002 scripts."""
