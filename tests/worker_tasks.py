"""Tasks for the worker-pool tests: module-level functions a worker can import (not pytest's modules)."""

from __future__ import annotations

import os
import signal
import time

import numpy as np

from forest_carbon_plugin.core.errors import ForestCarbonError


def square_sum(seed: int, n: int):
    """A result that depends on the worker's numpy (not only on the arguments' pickles)."""
    values = np.random.default_rng(seed).standard_normal(n)
    return seed, float(np.sum(values * values)), os.getpid()


def fail_on(value: int, bad: int):
    if value == bad:
        raise ForestCarbonError(f"tile {value} is broken")
    return value


def die_on(value: int, bad: int):
    if value == bad:
        os.kill(os.getpid(), signal.SIGKILL)
    return value


def sleep_then(value: int, seconds: float):
    time.sleep(seconds)
    return value
