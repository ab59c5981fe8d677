"""Credentials never leave the machine: refuse credential files and key material in the inputs.

Two checks, both raising `CredentialError` with the file at fault:
- by name: `kaggle.json`, `.env`, `*.pem`, `id_rsa*`, `*token*`, `.netrc`, `credentials*`;
- by content: text that looks like a Kaggle key (`kaggle.json`'s `"key"`, `KGAT_` tokens,
  `KAGGLE_KEY=`), an AWS key (`AKIA...`, `aws_secret_access_key`), a Hugging Face token
  (`hf_...`) or a private key block. Binary files (checkpoints) are scanned too: the patterns
  are long enough that random bytes do not match them.

Wheels are zip archives, so `scan_wheel` looks inside them: members named like a credential
file, and small text members whose content holds a key.
"""

from __future__ import annotations

import fnmatch
import re
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from bundler.errors import CredentialError

NAME_PATTERNS = ("kaggle.json", ".env", "*.pem", "id_rsa*", "*token*", ".netrc", "credentials*")
# Inside a wheel, `*token*` and `*.pem` would refuse honest libraries (tokenizers, certifi's
# cacert.pem): only names that are credential files and nothing else are refused there.
WHEEL_MEMBER_PATTERNS = ("kaggle.json", ".env", "id_rsa", "id_rsa.*", ".netrc", "access_token")
_CHUNK = 8 << 20
_OVERLAP = 512
_TEXT_MEMBER_LIMIT = 256 << 10

# (what, literal anchors, pattern): the pattern is only tried near an anchor, found with
# bytes.find, so scanning a checkpoint of hundreds of MB takes a moment, not minutes.
_KEY_PATTERNS: tuple[tuple[str, tuple[bytes, ...], re.Pattern[bytes]], ...] = (
    ("a Kaggle API key (kaggle.json)", (b'"key"',), re.compile(rb'"key"\s*:\s*"[0-9a-f]{32}"')),
    ("a Kaggle API token (KGAT_)", (b"KGAT_",), re.compile(rb"KGAT_[0-9A-Fa-f]{32}")),
    (
        "a Kaggle key (KAGGLE_KEY)",
        (b"KAGGLE_",),
        re.compile(rb"KAGGLE_(?:KEY|API_TOKEN)\s*[=:]\s*[\"']?[0-9A-Za-z_]{20,}"),
    ),
    (
        "an AWS access key id",
        (b"AKIA", b"ASIA"),
        re.compile(rb"(?<![0-9A-Z])(?:AKIA|ASIA)(?!IOSFODNN7EXAMPLE)[0-9A-Z]{16}"),
    ),
    (
        "an AWS secret key",
        (b"aws_secret_access_key",),
        re.compile(rb"aws_secret_access_key\s*[=:]\s*[\"']?[0-9A-Za-z/+]{40}"),
    ),
    ("a Hugging Face token", (b"hf_",), re.compile(rb"(?<![0-9A-Za-z_])hf_[0-9A-Za-z]{34}")),
    (
        "a private key",
        (b"PRIVATE KEY-----",),
        re.compile(rb"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED )?PRIVATE KEY-----"),
    ),
)
_BEFORE, _AFTER = 48, 160  # bytes around an anchor that its pattern may span


def credential_name(name: str, patterns: Iterable[str] = NAME_PATTERNS) -> str | None:
    """The pattern a file name matches (case-insensitive), or None."""
    lowered = name.lower()
    for pattern in patterns:
        if fnmatch.fnmatchcase(lowered, pattern):
            return pattern
    return None


def find_key(data: bytes) -> str | None:
    """What kind of key `data` holds, or None."""
    for what, anchors, pattern in _KEY_PATTERNS:
        for anchor in anchors:
            at = data.find(anchor)
            while at != -1:
                if pattern.search(data, max(0, at - _BEFORE), at + _AFTER):
                    return what
                at = data.find(anchor, at + 1)
    return None


def check_name(path: Path, role: str) -> None:
    """Refuse `path` when its name is a credential file's."""
    pattern = credential_name(path.name)
    if pattern is not None:
        raise CredentialError(
            f"{role}: {path} looks like a credential file (its name matches {pattern!r}); "
            "credentials never go into a bundle. Point at the model's checkpoint instead, "
            "or rename the file if it really holds weights."
        )


def check_content(path: Path, role: str, advance: Callable[[int], None] | None = None) -> None:
    """Refuse `path` when its bytes hold something that looks like a key (read in chunks)."""
    tail = b""
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            if advance is not None:
                advance(len(chunk))
            window = tail + chunk
            what = find_key(window)
            if what is not None:
                raise CredentialError(
                    f"{role}: {path} contains what looks like {what}; credentials never go into a "
                    "bundle. Remove the key from the file (or use another file) and build again."
                )
            tail = window[-_OVERLAP:]


def check_input(path: Path, role: str) -> None:
    """Name and content checks for a file the build reads or copies."""
    check_name(path, role)
    check_content(path, role)


def scan_wheel(path: Path) -> None:
    """Refuse a wheel that carries a credential file or a key in one of its small text members."""
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                member = info.filename.rsplit("/", 1)[-1]
                pattern = credential_name(member, WHEEL_MEMBER_PATTERNS)
                if pattern is not None:
                    raise CredentialError(
                        f"wheel {path.name}: carries {info.filename!r}, a credential file; rebuild the "
                        "wheel from a source tree without it (check MANIFEST.in / package data)."
                    )
                if info.is_dir() or info.file_size > _TEXT_MEMBER_LIMIT:
                    continue
                data = zf.read(info)
                if b"\0" in data:
                    continue
                what = find_key(data)
                if what is not None:
                    raise CredentialError(
                        f"wheel {path.name}: {info.filename!r} contains what looks like {what}; rebuild "
                        "the wheel without the key."
                    )
    except zipfile.BadZipFile:
        raise CredentialError(f"wheel {path.name}: not a zip archive, cannot be checked; delete it") from None


def scan_folder(folder: Path, written: Iterable[str]) -> None:
    """Check every file of the flat bundle folder before it is swapped in.

    `written` names the files the build itself wrote from checked inputs (weights, manifests):
    their names come from `bundle.toml`, so only the wheels and anything unexpected are checked.
    """
    ours = set(written)
    for path in sorted(folder.iterdir()):
        if path.suffix == ".whl":
            scan_wheel(path)
        elif path.name not in ours:
            check_input(path, "bundle folder")
