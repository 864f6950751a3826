"""Fixtures for tests that spawn several gloo processes."""

import pytest

from distributed_helpers import run_on_ranks


@pytest.fixture(scope="session")
def spawn_ranks():
    """Return `run_on_ranks(fn, world_size, *args, timeout_s=...)`."""
    return run_on_ranks
