"""The dry-run stage's fixtures (bundler.dryrun: inputs, tree, runtimes, the twin, the verdict, the
report), for every module in this folder."""

from __future__ import annotations

import pytest

from bundler.config import BundleConfig
from tests.projects import make_dryrun_project


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel (a child process) inherits this: small models, a shared 2-core machine."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> BundleConfig:
    """The tiny dry-run project (tests/projects.py's `make_dryrun_project`: built and rendered),
    made once per test module."""
    return make_dryrun_project(tmp_path_factory.mktemp("dryrun"))
