"""Shared test setup.

One torch thread for the whole suite: the models are tiny, the machine has 2 cores shared with
the loader threads (and, in CI, nothing else), and one thread makes runs repeatable. It is set
at import, before any test module is collected, so every test sees the same setting.

Tests marked `gpu` need a CUDA device: without one they are skipped with `NO_GPU` as the reason
(the default `-ra` prints it), never run on CPU as if they had passed.
"""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)

NO_GPU = "no CUDA device: run `python -m benchmarks --gpu-check` on a GPU machine"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=NO_GPU)
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
