"""The Kaggle image's baseline: what `pip freeze --all` printed in a Kaggle notebook.

A baseline is data, not code. `bundler/target/baselines/<name>.txt` holds the snapshots shipped
with bundler; `target.baseline` names one of them or is the path of the user's own file.
Lines are `name==version` (or `name===version`); `name @ URL` lines are accepted when the
URL's file name carries the version; comments, blank lines and `-e`/option lines are ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    NormalizedName,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from bundler.errors import WheelsError

BASELINES_DIR = Path(__file__).resolve().parent / "baselines"
HOW_TO_TAKE = (
    "take one in a Kaggle notebook with `!pip freeze --all > /kaggle/working/kaggle-baseline.txt`, "
    "download it and set target.baseline to its path"
)

# Never vendored: GPU builds of gigabytes that only the image's own copy can match.
PROTECTED_NAMES = frozenset({"torch", "torchvision", "torchaudio", "triton", "pytorch-triton"})
PROTECTED_PREFIXES = ("nvidia-", "cuda-", "cupy-cuda")

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*===?\s*([^\s;#]+)")
_URL = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*@\s*(\S+)")


def is_protected(name: str) -> bool:
    """torch, torchvision, torchaudio, triton and CUDA packages: never vendored."""
    key = canonicalize_name(name)
    return key in PROTECTED_NAMES or key.startswith(PROTECTED_PREFIXES)


@dataclass(frozen=True)
class Pin:
    name: str  # as the freeze spells it
    version: str  # as the freeze spells it, local label included (e.g. 2.10.0+cu128)

    @property
    def key(self) -> NormalizedName:
        return canonicalize_name(self.name)


@dataclass(frozen=True)
class Baseline:
    name: str  # the shipped name, or the file's stem
    source: Path
    pins: dict[NormalizedName, Pin]

    def get(self, name: str) -> Pin | None:
        return self.pins.get(canonicalize_name(name))

    def version(self, name: str) -> Version | None:
        pin = self.get(name)
        return Version(pin.version) if pin else None


def shipped_baselines() -> list[str]:
    return sorted(p.stem for p in BASELINES_DIR.glob("*.txt"))


def _version_from_url(url: str) -> str | None:
    filename = PurePosixPath(unquote(urlparse(url).path)).name
    try:
        return str(parse_wheel_filename(filename)[1])
    except InvalidWheelFilename:
        pass
    try:
        return str(parse_sdist_filename(filename)[1])
    except InvalidSdistFilename:
        return None


def parse_freeze(text: str, source: str) -> dict[NormalizedName, Pin]:
    """`pip freeze --all` text -> pins by canonical name; a line it cannot read is an error."""
    pins: dict[NormalizedName, Pin] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", "-")):
            continue
        match = _PIN.match(line)
        if match:
            name, version = match.group(1), match.group(2)
        else:
            url_match = _URL.match(line)
            url_version = _version_from_url(url_match.group(2)) if url_match else None
            if not url_match or url_version is None:
                raise WheelsError(
                    f"baseline {source}, line {number}: cannot read {line!r} as 'name==version'; "
                    "take the baseline with `pip list --format=freeze` (always prints versions) "
                    "or fix that line"
                )
            name, version = url_match.group(1), url_version
        try:
            Version(version)
        except InvalidVersion:
            raise WheelsError(
                f"baseline {source}, line {number}: {version!r} is not a valid version for {name}; fix that line"
            ) from None
        pins[canonicalize_name(name)] = Pin(name, version)
    return pins


def baseline_path(spec: str) -> Path:
    """The freeze file `target.baseline` names: a shipped baseline's file, else `spec` as a path.

    The one lookup (the build's fingerprint hashes this file too); the file may not exist.
    """
    shipped = BASELINES_DIR / f"{spec}.txt"
    return shipped if shipped.is_file() and "/" not in spec else Path(spec).expanduser()


def load_baseline(spec: str) -> Baseline:
    """A shipped baseline by name (e.g. 'kaggle-2026-08-12'), or the path of a freeze file."""
    shipped = BASELINES_DIR / f"{spec}.txt"
    path = baseline_path(spec)
    name = spec if path == shipped else path.stem
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = "no such file" if isinstance(e, FileNotFoundError) else str(e)
        raise WheelsError(
            f"target.baseline = {spec!r} is neither a baseline shipped with bundler "
            f"({', '.join(shipped_baselines())}) nor a readable file ({reason}); {HOW_TO_TAKE}"
        ) from None
    pins = parse_freeze(text, str(path))
    if not pins:
        raise WheelsError(f"baseline {path} lists no packages; {HOW_TO_TAKE}")
    return Baseline(name=name, source=path, pins=pins)
