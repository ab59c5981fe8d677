"""`rss_growth`: peak resident memory of the pipeline on 4N images / on N images.

Each size runs in a FRESH interpreter (`python -m benchmarks.bench_rss CHILD-ARGS`) that runs
`kernel_src.run.run` once and reports its own `ru_maxrss` (and its children's, should the loader
ever use processes). A streaming pipeline holds a bounded number of batches whatever the image
count, so the ratio stays near 1; one that accumulates images, probabilities or masks grows with N.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bundler.demo.synthetic import SyntheticSet
from kernel_src.spec import InferenceSpec

from .report import BenchResult, Figure, Target
from .workload import Models, demo_models, half_size, make_images, make_spec, save_models


def _child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="benchmarks.bench_rss")
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--test-dir", type=Path, required=True)
    parser.add_argument("--sample", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from kernel_src.run import run

    spec = InferenceSpec.from_dict(json.loads(args.spec.read_text(encoding="utf-8")))
    start = time.perf_counter()
    result = run(
        spec,
        bundle_dir=args.bundle,
        test_dir=args.test_dir,
        sample_submission=args.sample,
        out_dir=args.out,
        progress=False,
    )
    seconds = time.perf_counter() - start
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    profile = result.profile
    report = {
        "maxrss_kb": max(own, children),
        "images": profile.get("images"),
        "seconds": seconds,
        "fixed_s": profile.get("fixed_s"),
        "per_image_s": profile.get("per_image_s"),
        "device": profile.get("device"),
    }
    print("RSS-REPORT " + json.dumps(report), flush=True)


def measure(
    spec: InferenceSpec,
    bundle: Path,
    images: SyntheticSet,
    out: Path,
    threads: int = 0,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run the pipeline once in a fresh interpreter; its peak RSS (kB), image count and seconds."""
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / "spec.json"
    spec_path.write_text(json.dumps(spec.to_dict()), encoding="utf-8")
    command = [
        sys.executable,
        "-m",
        "benchmarks.bench_rss",
        "--spec",
        str(spec_path),
        "--bundle",
        str(bundle),
        "--test-dir",
        str(images.images_dir),
        "--sample",
        str(images.sample_submission),
        "--out",
        str(out),
        "--threads",
        str(threads),
    ]
    root = Path(__file__).resolve().parent.parent
    child_env = {**os.environ, **(env or {})}
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=root, env=child_env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RSS-REPORT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"rss_growth: the child run on {images.images_dir} failed (exit {done.returncode}): {done.stderr[-3000:]}"
        )
    report: dict[str, Any] = json.loads(lines[-1].removeprefix("RSS-REPORT "))
    return report


def bench_rss(
    *, quick: bool, n: int | None = None, height: int = 256, width: int = 1600, models: Models | None = None
) -> BenchResult:
    result = BenchResult("rss_growth")
    n = n or (6 if quick else 16)
    seg_input = half_size(height, width)
    cls_input = half_size(height, width, 4)
    with tempfile.TemporaryDirectory(prefix="bench-rss-") as tmp:
        root = Path(tmp)
        small = make_images(root / "small", n, height=height, width=width, seed=11)
        large = make_images(root / "large", 4 * n, height=height, width=width, seed=11)
        models = save_models(models or demo_models(seg_input, cls_input), root / "bundle", large)
        spec = make_spec(models, height=height, width=width, gating="per_image")
        runs = {
            "N": measure(spec, root / "bundle", small, root / "out-small", torch.get_num_threads()),
            "4N": measure(spec, root / "bundle", large, root / "out-large", torch.get_num_threads()),
        }
    for label, report in runs.items():
        result.row(
            f"peak RSS, {label} = {report['images']} images",
            f"{report['maxrss_kb'] / 1024:.0f} MiB",
            f"fresh interpreter, run took {report['seconds']:.1f} s",
        )
    ratio = runs["4N"]["maxrss_kb"] / runs["N"]["maxrss_kb"]
    result.notes.append(
        f"demo models (inputs {seg_input[0]}x{seg_input[1]} and {cls_input[0]}x{cls_input[1]}) on "
        f"{height}x{width} images, gating per_image, batch {spec.batch_size}"
    )
    result.figures.append(Figure("rss_growth", ratio, Target(1.10, at_most=True)))
    return result


if __name__ == "__main__":
    _child(sys.argv[1:])
