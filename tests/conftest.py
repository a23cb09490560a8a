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
    """One torch thread: on tiny slices, threading costs more than it gains (about 10x
    slower with 2 threads on the 2-core CI box when other processes compete)."""
    torch.set_num_threads(1)
    yield
