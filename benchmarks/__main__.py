"""`python -m benchmarks [--quick] [--only NAME ...] [--threads N]` and `python -m benchmarks --gpu-check`.

Prints one table per benchmark, then, as the last lines, the `key=value` figures. A benchmark
that fails prints its error and the others still run; the exit status is then 1.

`--gpu-check` runs instead what waits for a GPU (the `gpu`-marked tests and the CUDA benchmark,
`benchmarks/gpu_check.py`); without CUDA it says so and exits 2.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable

import torch
from rich.console import Console

from .report import BenchResult, figure_lines, print_result

Bench = Callable[..., BenchResult]


def _benchmarks() -> dict[str, Bench]:
    from .bench_classify import bench_classify
    from .bench_cuda import bench_cuda
    from .bench_overhead import bench_overhead
    from .bench_pipeline import bench_pipeline
    from .bench_rebuild import bench_rebuild
    from .bench_rle import bench_rle
    from .bench_rss import bench_rss
    from .bench_tune import bench_tune

    return {
        "rle_vs_naive": bench_rle,
        "noop_rebuild_s": bench_rebuild,
        "pipeline_vs_naive": bench_pipeline,
        "overhead_vs_forward": bench_overhead,
        "rss_growth": bench_rss,
        "cuda": bench_cuda,
        "tune_s_per_1000": bench_tune,
        "classify": bench_classify,
    }


NAMES = (
    "rle_vs_naive",
    "noop_rebuild_s",
    "pipeline_vs_naive",
    "overhead_vs_forward",
    "rss_growth",
    "cuda",
    "tune_s_per_1000",
    "classify",
)


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a few minutes on 2 CPU cores")
    parser.add_argument("--only", action="append", choices=NAMES, metavar="NAME", help=f"run only NAME: {NAMES}")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument(
        "--gpu-check",
        action="store_true",
        help="on a GPU machine: the gpu-marked tests and the CUDA benchmark, within 8 minutes (exit 2 without CUDA)",
    )
    args = parser.parse_args(argv)
    if args.gpu_check and (args.quick or args.only):
        parser.error("--gpu-check runs on its own: drop --quick and --only")
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(highlight=False)
    now = datetime.datetime.now(datetime.UTC)
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else "none"
    mode = "gpu-check" if args.gpu_check else "quick" if args.quick else "full"
    console.print(
        f"bundler benchmarks ({mode}) - {now:%Y-%m-%d %H:%M} UTC; "
        f"{os.cpu_count()} CPU cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"CUDA: {cuda}; python {platform.python_version()}; load average {_load()}",
        soft_wrap=True,
    )
    if args.gpu_check:
        from .gpu_check import gpu_check

        return gpu_check(console)
    benches = _benchmarks()
    results: list[BenchResult] = []
    failed: list[str] = []
    for name in args.only or NAMES:
        begin = time.perf_counter()
        try:
            result = benches[name](quick=args.quick)
        except Exception as e:
            console.print(f"[bold red]{name} failed:[/] {type(e).__name__}: {e}", soft_wrap=True)
            traceback.print_exc(file=sys.stderr)
            failed.append(name)
            continue
        print_result(console, result)
        console.print(f"  ({name}: {time.perf_counter() - begin:.0f} s; load average now {_load()})")
        results.append(result)
    lines = figure_lines(results) + [f"{name}=failed" for name in failed]
    print("\n".join(lines), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
