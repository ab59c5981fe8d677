"""How long the notebook will take on the scored rerun: pure arithmetic on profile.json data.

    projected = fixed + per_image x hidden_test_images

`fixed` is everything before the first batch (setup, pip install, imports, model loading:
profile `fixed_s`); `per_image` is the measured cost of one image (profile `per_image_s`).
The local figures are scaled to the target by a calibration:
- a `profile.json` from a real Kaggle run of the same notebook: its own `fixed_s` is used, and
  per-image time is scaled by kaggle `per_image_s` / local `per_image_s`;
- a factor the user gives (Kaggle seconds per local second), applied to both parts;
- by default, the newest `profile.json` that `bundler status` downloaded from a Kaggle run
  (`build/kaggle/v<N>/profile.json`, highest N): "calibrated from Kaggle run vN of DATE";
- none: the figure is for this machine, and says so.

Whether the projection may decide the verdict (`Projection.decides`): only when it is calibrated,
or when this run used the kind of device the kernel targets (`kernel.enable_gpu`: cuda). A CPU run
projected to a GPU kernel is shown with its basis and the way to calibrate, never a FAIL by itself:
the same bundle projected 292 s on a quiet machine and 3,970 s under load.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bundler.config import kaggle_run_dirs
from bundler.errors import DryRunError
from kernel_src.paths import PROFILE_FILE

NO_CALIBRATION_NOTE = "none: figure is for this machine"


@dataclass(frozen=True)
class Calibration:
    method: str  # "none" | "factor" | "profile" | "kaggle_run" (the newest downloaded run's profile)
    per_image_factor: float  # target seconds per local second, for the per-image cost
    fixed_s: float | None  # the target's own fixed cost (profile calibration), else None
    fixed_factor: float  # applied to the local fixed cost when `fixed_s` is None
    source: str  # human-readable: where the calibration came from

    def describe(self) -> str:
        if self.method == "none":
            return NO_CALIBRATION_NOTE
        if self.method == "factor":
            return f"factor {self.per_image_factor:g} (target seconds per local second), {self.source}"
        if self.method == "kaggle_run":
            return (
                f"calibrated from {self.source}: per-image x{self.per_image_factor:.3g}, "
                f"fixed {self.fixed_s:.1f} s from that run"
            )
        return (
            f"Kaggle profile {self.source}: per-image x{self.per_image_factor:.3g}, "
            f"fixed {self.fixed_s:.1f} s from that run"
        )


NO_CALIBRATION = Calibration("none", 1.0, None, 1.0, "")


def factor_calibration(factor: float, source: str = "given by the user") -> Calibration:
    if not (factor > 0 and math.isfinite(factor)):
        raise DryRunError(f"calibration factor {factor!r} must be a positive number (Kaggle seconds per local second)")
    return Calibration("factor", factor, None, factor, source)


def _number(profile: Mapping[str, Any], key: str, what: str) -> float:
    value = profile.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise DryRunError(f"{what}: `{key}` is {value!r}, expected seconds >= 0; is this a bundler profile.json?")
    return float(value)


def profile_calibration(kaggle: Mapping[str, Any], local: Mapping[str, Any], source: str) -> Calibration:
    """Calibrate by a `profile.json` downloaded from a real Kaggle run of the same notebook."""
    k_per = _number(kaggle, "per_image_s", f"calibration profile {source}")
    k_fixed = _number(kaggle, "fixed_s", f"calibration profile {source}")
    l_per = _number(local, "per_image_s", "the dry-run's profile.json")
    if k_per <= 0:
        raise DryRunError(f"calibration profile {source}: per_image_s is 0; it must come from a run that saw images")
    if l_per <= 0:
        raise DryRunError("the dry-run's profile.json has per_image_s 0: no image was timed, so nothing can be scaled")
    return Calibration("profile", k_per / l_per, k_fixed, 1.0, source)


def latest_kaggle_profile(root: Path) -> Path | None:
    """The newest `build/kaggle/v<N>/profile.json` under the project `root` (highest N), if any."""
    runs = kaggle_run_dirs(root)
    found = [n for n, folder in runs.items() if (folder / PROFILE_FILE).is_file()]
    return runs[max(found)] / PROFILE_FILE if found else None


def kaggle_run_calibration(path: Path, local: Mapping[str, Any]) -> Calibration:
    """Calibrate by a run's downloaded profile.json, named "Kaggle run vN of DATE" (the run's start)."""
    fix = "delete it or download it again with `bundler status`"
    try:
        kaggle = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DryRunError(f"{path} cannot be read ({e}); {fix}") from None
    if not isinstance(kaggle, dict):
        raise DryRunError(f"{path} is not a profile.json object; {fix}")
    started = kaggle.get("started_at")
    timed = isinstance(started, (int, float)) and not isinstance(started, bool)
    stamp = float(started) if timed and started is not None else path.stat().st_mtime
    label = f"Kaggle run {path.parent.name} of {time.strftime('%Y-%m-%d', time.gmtime(stamp))}"
    return replace(profile_calibration(kaggle, local, str(path)), method="kaggle_run", source=label)


@dataclass(frozen=True)
class Projection:
    fixed_s: float  # on the target
    per_image_s: float  # on the target
    images: int  # the hidden test size
    projected_s: float
    budget_s: float
    within_budget: bool
    margin_s: float  # budget - projected (negative: over budget)
    calibration: Calibration
    local_device: str = "cpu"  # the device kind this run used (profile.json "device")
    target_device: str = "cpu"  # the device kind the kernel runs on at Kaggle (cuda when kernel.enable_gpu)

    @property
    def decides(self) -> bool:
        """Calibrated, or measured on the target's kind of device: over budget is then a FAIL."""
        return self.calibration.method != "none" or self.local_device == self.target_device

    def basis(self) -> str:
        """Where the figure comes from, in words."""
        if self.calibration.method != "none":
            return self.calibration.describe()
        if self.decides:
            return f"measured here on {self.local_device}, the kind of device the kernel targets"
        return (
            f"measured on this machine's {self.local_device}, while the kernel runs on {self.target_device} at "
            "Kaggle: not evidence of Kaggle's time; calibrate it with a Kaggle run (`bundler push --wait`, then "
            "`bundler status`) or --calibration (Kaggle seconds per local second)"
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["calibration"] = self.calibration.describe()
        return data


def project(
    local: Mapping[str, Any],
    *,
    hidden_images: int,
    budget_s: float,
    calibration: Calibration = NO_CALIBRATION,
    target_device: str | None = None,
) -> Projection:
    """Project a local `profile.json` (as a mapping) to `hidden_images` images on the target
    (`target_device`: the kernel's kind of device; None: the one this run used)."""
    if hidden_images < 1:
        raise DryRunError(f"competition.hidden_test_images = {hidden_images}: must be a positive count")
    if not budget_s > 0:
        raise DryRunError(f"time budget {budget_s!r} s must be positive; set --time-budget or inference.time_budget_s")
    local_fixed = _number(local, "fixed_s", "the dry-run's profile.json")
    local_per = _number(local, "per_image_s", "the dry-run's profile.json")
    fixed = calibration.fixed_s if calibration.fixed_s is not None else local_fixed * calibration.fixed_factor
    per_image = local_per * calibration.per_image_factor
    projected = fixed + per_image * hidden_images
    return Projection(
        fixed_s=fixed,
        per_image_s=per_image,
        images=hidden_images,
        projected_s=projected,
        budget_s=float(budget_s),
        within_budget=projected <= budget_s,
        margin_s=float(budget_s) - projected,
        calibration=calibration,
        local_device=str(local.get("device") or "cpu"),
        target_device=target_device or str(local.get("device") or "cpu"),
    )
