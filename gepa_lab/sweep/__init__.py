"""Sweeps: many GEPA trials on Ray Tune (driver, trainable, search space, stopping), and W&B Sweeps.

Importing any part of it stores the defaults conf/sweep.yaml composes over (gepa_lab.sweep.config)."""
from gepa_lab.sweep.config import SweepConfig

__all__ = ["SweepConfig"]
