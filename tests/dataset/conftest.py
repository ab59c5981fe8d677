"""The dataset stage's fixtures (bundler's `build` command: weights, wheels, credentials, the
dataset folder), for every module in this folder."""

from __future__ import annotations

import pytest


@pytest.fixture
def no_rehearsal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The offline-install rehearsal skipped: it is tests/dataset/test_wheels_rehearse.py's subject.
    A module that vendors wheels without it says `pytestmark = pytest.mark.usefixtures("no_rehearsal")`."""
    monkeypatch.setenv("BUNDLER_SKIP_REHEARSAL", "1")
