"""Shared fixtures: small slices of the real Fashion-MNIST (never synthetic data)."""

from __future__ import annotations

import pytest
import torch

from bnstudy.data import load_fashion_mnist

SMALL_TRAIN, SMALL_TEST = 1024, 512


@pytest.fixture(scope="session")
def small_data():
    """The first 1,024 training and 512 test images, on the CPU, float32."""
    return load_fashion_mnist(None, "cpu", SMALL_TRAIN, SMALL_TEST)


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """Two threads at most, whatever the machine: the suite must fit a 2-core CI box."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    yield
