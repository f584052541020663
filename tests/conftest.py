"""Suite-wide settings.

Tests run tiny models, where intra-op threads only add synchronisation, and a CI machine may be shared with a
training run: two processes each spinning 2 OpenMP threads on 2 cores made a 10 s test take 136 s. One thread
here, and (through the environment) in the worker and torchrun processes the tests start.
"""

import os

os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)


def absent(reason: str) -> None:
    """A test's data or checkpoint is missing: skip it, or under CI (GLIMPSE_REQUIRE_DATA=1, set by .ci/run) fail,
    so a run that silently tested nothing cannot pass."""
    import pytest

    if os.environ.get("GLIMPSE_REQUIRE_DATA") == "1":
        pytest.fail(f"{reason} (GLIMPSE_REQUIRE_DATA=1: CI needs it)")
    pytest.skip(reason)
