"""How bundler shows a path to the user: relative to the current folder when it is inside it.

The one helper every stage's console output uses, so the commands it prints (`kaggle datasets
version -p ...`, `kaggle kernels push -p ...`) read the same everywhere and can be pasted as
they are from the folder the user ran bundler in.
"""

from __future__ import annotations

from pathlib import Path


def shown_path(path: Path) -> str:
    """`path` relative to the current folder ("." for the folder itself) when inside it, else as given."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve())) or "."
    except ValueError:
        return str(path)
