"""Shared fixtures: the real dataset (required in CI) and small synthetic data."""

from __future__ import annotations

import os

import numpy as np
import pytest

from impls.config import TrainConfig
from impls.data import DatasetNotFoundError, FashionMNIST, load_fashion_mnist


@pytest.fixture(scope="session")
def real_data() -> FashionMNIST:
    """The verified Fashion-MNIST arrays; a missing dataset fails in CI and skips elsewhere."""
    try:
        return load_fashion_mnist(download=False)
    except DatasetNotFoundError as error:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the real dataset (.ci/run installs it): {error}")
        pytest.skip(f"real Fashion-MNIST not available offline: {error}")


@pytest.fixture
def tiny_data() -> FashionMNIST:
    """A small random dataset with the real shapes (600 train, 100 test)."""
    rng = np.random.default_rng(1234)
    return FashionMNIST(
        train_images=rng.integers(0, 256, size=(600, 28, 28), dtype=np.uint8),
        train_labels=rng.integers(0, 10, size=600).astype(np.int64),
        test_images=rng.integers(0, 256, size=(100, 28, 28), dtype=np.uint8),
        test_labels=rng.integers(0, 10, size=100).astype(np.int64),
    )


@pytest.fixture
def default_config() -> TrainConfig:
    """The seed's settings with threads pinned, as every test run uses."""
    return TrainConfig(threads=2)
