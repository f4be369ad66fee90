"""One seed for every random generator a run draws from."""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch's CPU and CUDA generators with ``seed``, so
    that dropout, fresh classifier heads and anything else drawing from them repeat run to run. (Data order and
    mask noise have their own generators, seeded from ``PruneConfig.seed``.)"""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # every CUDA device too
