"""`python -m benchmarks --gpu-check`: everything that waits for a GPU, as one command.

Made for a bare GPU machine that has only this repository and its `.venv` (no network needed):
`.venv/bin/python -m benchmarks --gpu-check` from the repository root. Within 8 minutes on one GPU:

1. the `gpu`-marked tests (tests/kernel/test_gpu.py: fp16 vs fp32 agreement, channels_last on real
   CUDA through `run()`, the two-GPU split when two are present, the peak GPU memory of a
   full-size run) in a child pytest; their counts and the properties they record
   (`record_property`: `gpu_peak_mib`, Dice figures, fp16 differences) are read back from its
   JUnit XML;
2. the CUDA benchmark (`bench_cuda`): the first-place-scale ensemble, 4 classifiers + 9
   segmenters, 3 flip views, 1600x256, fp16 on one GPU (and on every GPU when there are
   several), on `IMAGES` images: projected minutes for 5,506 images, and the ratio to the naive
   loop on the same GPU.

It prints both as they run, then `key=value` lines, the last `gpu_check=passed` or
`gpu_check=failed` (exit 0 / 1). Without CUDA it checks nothing and says so: a line on stderr,
`gpu_check=no_gpu`, exit 2.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console

from .report import figure_lines, print_result

ROOT = Path(__file__).resolve().parent.parent
GPU_TESTS = ("tests/kernel/test_gpu.py",)
TESTS_TIMEOUT_S = 240  # the tests take about a minute on one GPU; the benchmark gets the rest of the 8
IMAGES = 16  # benchmark images: enough for a per-image rate, few enough for the naive loop's Python
NO_GPU = (
    "gpu-check: no CUDA device here (torch.cuda.is_available() is False), so nothing was checked. "
    "Run `.venv/bin/python -m benchmarks --gpu-check` from the repository root on a machine with an "
    "NVIDIA GPU (the repository and its .venv are all it needs)."
)


@dataclass
class PytestRun:
    """What a child pytest reported: its exit status, counts and recorded properties."""

    returncode: int
    tests: int = 0
    failed: int = 0
    skipped: int = 0
    properties: dict[str, str] = field(default_factory=dict)
    problem: str = ""  # why there are no counts (a timeout, no JUnit XML), "" when there are

    @property
    def passed(self) -> int:
        return self.tests - self.failed - self.skipped

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.problem


def read_junit(path: Path) -> PytestRun:
    """Counts and `record_property` properties from a pytest JUnit XML file (xunit1)."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    run = PytestRun(returncode=0)
    for suite in suites:
        run.tests += int(suite.get("tests", 0))
        run.failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        run.skipped += int(suite.get("skipped", 0))
        for prop in suite.iter("property"):
            run.properties[str(prop.get("name"))] = str(prop.get("value"))
    return run


def run_tests(paths: Sequence[str], *, marker: str | None, timeout_s: float, cwd: Path = ROOT) -> PytestRun:
    """A child `python -m pytest` over `paths` (only tests marked `marker` when given); its output
    goes straight to this process's stdout/stderr."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        junit = Path(tmp) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "junit_family=xunit1"]
        command += [f"--junitxml={junit}", *(["-m", marker] if marker else []), *paths]
        try:
            done = subprocess.run(command, cwd=cwd, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return PytestRun(returncode=1, problem=f"the tests ran past {timeout_s:.0f} s and were stopped")
        if not junit.is_file():
            return PytestRun(returncode=done.returncode, problem=f"pytest exited {done.returncode} without a report")
        result = read_junit(junit)
        result.returncode = done.returncode
        return result


def gpu_check(console: Console) -> int:
    """Run the check (see the module docstring); 0 passed, 1 failed, 2 no GPU."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus == 0:
        print(NO_GPU, file=sys.stderr, flush=True)
        print("gpu_check=no_gpu", flush=True)
        return 2
    begin = time.perf_counter()
    names = sorted({torch.cuda.get_device_name(i) for i in range(gpus)})
    console.print(f"[bold]gpu-check[/]: {gpus} GPU(s): {', '.join(names)}; 1. the gpu-marked tests", soft_wrap=True)
    tests = run_tests(GPU_TESTS, marker="gpu", timeout_s=TESTS_TIMEOUT_S)
    lines = [f"gpu_check_gpus={gpus}", f"gpu_check_device={names[0].replace(' ', '_')}"]
    if tests.problem:
        lines.append(f"gpu_tests_problem={tests.problem}")
    lines += [f"gpu_tests_passed={tests.passed}", f"gpu_tests_failed={tests.failed}"]
    lines += [f"gpu_tests_skipped={tests.skipped}", *(f"{k}={v}" for k, v in sorted(tests.properties.items()))]
    tests_s = time.perf_counter() - begin
    console.print(f"[bold]gpu-check[/]: tests took {tests_s:.0f} s; 2. the CUDA benchmark ({IMAGES} images)")
    bench_ok = True
    try:
        from .bench_cuda import bench_cuda

        result = bench_cuda(quick=True, n=IMAGES, precisions=("fp16",))
        print_result(console, result)
        lines += figure_lines([result])
    except Exception as e:
        console.print(f"[bold red]cuda benchmark failed:[/] {type(e).__name__}: {e}", soft_wrap=True)
        traceback.print_exc(file=sys.stderr)
        lines.append("cuda=failed")
        bench_ok = False
    passed = tests.ok and bench_ok
    lines += [f"gpu_check_tests_s={tests_s:.0f}", f"gpu_check_s={time.perf_counter() - begin:.0f}"]
    lines.append(f"gpu_check={'passed' if passed else 'failed'}")
    print("\n".join(lines), flush=True)
    return 0 if passed else 1
