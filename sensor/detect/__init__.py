"""Detectors: find identifiers and volumes, emit Observations; they never decide."""
