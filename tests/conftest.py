"""Shared test setup, and the fixtures more than one stage's tests use.

The tests live in one folder per stage (kernel/, dataset/, target/, notebook/, dryrun/, tune/,
demo/, scoring/, remote/), each with a conftest.py holding that stage's fixtures; the modules here
check what crosses stages (the architecture doc, errors, config, the sandbox, the benchmarks).
Helpers that are not fixtures live in tiny.py, projects.py, wheelhouse.py and kaggle_standin.py;
no test module imports another.

One torch thread for the whole suite: the models are tiny, the machine has 2 cores shared with
the loader threads (and, in CI, nothing else), and one thread makes runs repeatable. It is set
at import, before any test module is collected, so every test sees the same setting.

Tests marked `gpu` need a CUDA device: without one they are skipped with `NO_GPU` as the reason
(the default `-ra` prints it), never run on CPU as if they had passed.
"""

from __future__ import annotations

import pytest
import torch

from tests.tiny import TinyModels, make_tiny_models

torch.set_num_threads(1)

NO_GPU = "no CUDA device: run `python -m benchmarks --gpu-check` on a GPU machine"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=NO_GPU)
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """tests/tiny.py's real tiny models (two timm classifiers, two smp segmenters, seed 0) saved in
    a folder of their own, once per test module (a module may add models of its own beside them)."""
    folder = tmp_path_factory.mktemp("bundle")
    return TinyModels(folder, *make_tiny_models(folder))
