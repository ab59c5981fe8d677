"""Tiny packages built at test time: wheels (zip + dist-info, as a build backend writes them) and sdists.

Nothing here is committed as a binary: every archive is written from source text by the test.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def make_wheel(
    folder: Path,
    name: str,
    version: str,
    requires: Sequence[str] = (),
    *,
    tag: str = "py3-none-any",
    requires_python: str | None = None,
    extras: Sequence[str] = (),
) -> Path:
    """A valid, installable wheel with one module `<name>/__init__.py`."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"{_norm(name)}-{version}"
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    if requires_python:
        meta.append(f"Requires-Python: {requires_python}")
    meta += [f"Provides-Extra: {e}" for e in extras]
    meta += [f"Requires-Dist: {r}" for r in requires]
    purelib = "true" if tag.endswith("none-any") else "false"
    files = {
        f"{_norm(name)}/__init__.py": f"__version__ = {version!r}\n".encode(),
        f"{dist}.dist-info/METADATA": ("\n".join(meta) + "\n").encode(),
        f"{dist}.dist-info/WHEEL": (
            f"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: {purelib}\nTag: {tag}\n"
        ).encode(),
    }
    record = [_record_line(p, d) for p, d in files.items()] + [f"{dist}.dist-info/RECORD,,"]
    path = folder / f"{dist}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for p, d in files.items():
            zf.writestr(p, d)
        zf.writestr(f"{dist}.dist-info/RECORD", "\n".join(record) + "\n")
    return path


def make_sdist(folder: Path, name: str, version: str, requires: Sequence[str] = (), *, compiled: bool = False) -> Path:
    """A setuptools sdist (`setup.py` + PKG-INFO); `compiled` adds a C extension module."""
    folder.mkdir(parents=True, exist_ok=True)
    mod = _norm(name)
    root = f"{mod}-{version}"
    ext = f"    ext_modules=[Extension('{mod}_speedups', ['speedups.c'])],\n" if compiled else ""
    files = {
        "setup.py": (
            "from setuptools import Extension, setup\n"
            f"setup(\n    name={name!r},\n    version={version!r},\n    py_modules=[{mod!r}],\n"
            f"    install_requires={list(requires)!r},\n{ext})\n"
        ),
        f"{mod}.py": f"VERSION = {version!r}\n",
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    }
    if compiled:
        files["speedups.c"] = (
            "#include <Python.h>\n"
            'static struct PyModuleDef m = {PyModuleDef_HEAD_INIT, "' + mod + '_speedups", NULL, -1, NULL};\n'
            "PyMODINIT_FUNC PyInit_" + mod + "_speedups(void) { return PyModule_Create(&m); }\n"
        )
    path = folder / f"{root}.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for p, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{root}/{p}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def write_baseline(path: Path, pins: dict[str, str]) -> Path:
    path.write_text("# test baseline\n" + "".join(f"{n}=={v}\n" for n, v in pins.items()), encoding="utf-8")
    return path
