"""`bundler demo`: synthetic Severstal-like data, small demo models trained on the CPU, then the whole
build -> render -> dry-run chain.

`run_demo` and `DemoResult` are imported on first use: `bundler.demo.synthetic` (the synthetic
data alone) must import without the notebook packages (nbformat, nbclient) that the command's
build and dry-run need, so the GPU check and the benchmarks run on a bare GPU machine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bundler.demo.command import DemoResult, run_demo

__all__ = ["DemoResult", "run_demo"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from bundler.demo import command

        return getattr(command, name)
    raise AttributeError(f"module 'bundler.demo' has no attribute {name!r}")
