"""A checkpoint path and its container, checked without importing torch (a no-op build stays fast).

`check_checkpoint_path` refuses a path that is missing, a folder (named as one, with the checkpoint
files inside it) or not a regular file; `sniff` tells the container from the first bytes, so a
file that is none of them (`/etc/passwd`, an image) is refused in one line naming `ACCEPTED`
instead of failing somewhere inside torch's unpickler.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from bundler.config import ModelEntry
from bundler.errors import WeightsError

ACCEPTED = (
    "a state dict or training checkpoint written by torch.save, a .safetensors file, "
    'or a TorchScript file with kind = "torchscript"'
)
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors", ".tar")


def check_checkpoint_path(entry: ModelEntry, key: str) -> None:
    """Refuse a checkpoint path that is missing, a folder or not a regular file, saying which."""
    path = entry.checkpoint
    shown = f"{path} (a link to {path.resolve()})" if path.is_symlink() else str(path)
    fix = f"fix {key}.checkpoint (relative paths start at that file's folder)"
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix in CHECKPOINT_SUFFIXES and p.is_file())
        hint = f" (it holds {', '.join(inside[:3])}{', ...' if len(inside) > 3 else ''})" if inside else ""
        raise WeightsError(
            f"model {entry.spec.name!r}: checkpoint {shown} is a folder, not a checkpoint file{hint}; "
            f"name the file itself: {fix}"
        )
    if not path.exists():
        raise WeightsError(f"model {entry.spec.name!r}: checkpoint {shown} does not exist; {fix}")
    if not path.is_file():
        raise WeightsError(f"model {entry.spec.name!r}: checkpoint {shown} is not a regular file; {fix}")


def sniff(path: Path) -> str | None:
    """The container a checkpoint's first bytes show: "zip" (torch.save since PyTorch 1.6, TorchScript),
    "pickle" (the legacy torch.save format), "safetensors" (a little-endian header length, then JSON),
    "truncated" (a zip archive's first bytes without its end: a copy or download cut short), or None
    for anything else (a text file, an image, random bytes)."""
    with path.open("rb") as f:
        head = f.read(16)
    if zipfile.is_zipfile(path):
        return "zip"
    if head.startswith(b"PK\x03\x04"):
        return "truncated"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    if len(head) >= 10 and head[8:10] == b'{"' and int.from_bytes(head[:8], "little") < (100 << 20):
        return "safetensors"
    return None
