"""`bundler demo`: synthetic Severstal-like data, small demo models trained on the CPU, then the whole
build -> render -> dry-run chain."""

from bundler.demo.command import DemoResult, run_demo

__all__ = ["DemoResult", "run_demo"]
