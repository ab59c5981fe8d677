"""How bundler shows a path and a message to the user.

`shown_path`: relative to the current folder when it is inside it. The one helper every stage's
console output uses, so the commands it prints (`kaggle datasets version -p ...`, `kaggle kernels
push -p ...`) read the same everywhere and can be pasted as they are from the folder the user ran
bundler in.

`labelled`: a styled label ("error:") before a message printed exactly as written. Messages quote
the user's input (`[[segmenters]]`, `[extra]`, `models/[bold]unet.pth`), which rich would otherwise
read as markup and eat or restyle.

`strip_ansi`: text without the terminal's colour codes (IPython's tracebacks, a Kaggle log), as
the dry-run's events and the remote commands' diagnosis show it.
"""

from __future__ import annotations

import re
from pathlib import Path

from rich.text import Text

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # a terminal's escape sequence (colours, cursor moves)


def labelled(label: str, message: str, style: str = "bold red") -> Text:
    """`label` in `style`, a space, then `message` as literal text (no markup, no emoji codes)."""
    return Text.assemble((label, style), " ", message)


def strip_ansi(text: str) -> str:
    """`text` without its ANSI escape sequences."""
    return _ANSI.sub("", text)


def shown_path(path: Path) -> str:
    """`path` relative to the current folder ("." for the folder itself) when inside it, else as given."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve())) or "."
    except ValueError:
        return str(path)
