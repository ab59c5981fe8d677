"""How a setting is declared and how its value's type is checked: the one copy of both.

A setting is a dataclass field whose `metadata` is `setting(help, ...)`: its default is the
field's default, and its help text, its allowed values and the default as the reference shows
it live beside it (nbclient's traits carry `help=` the same way). `bundler.config` reads
bundle.toml's keys from these declarations and writes docs/config.md from them; the kernel's
`spec.py` reads a missing key's value with `default()`.

`typed(key, value, type_)` is the type check both sides use: a value of another type is a
`SpecError` naming the key, the type wanted and what was found. Stdlib only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from .errors import SpecError

_T = TypeVar("_T", int, float, bool, str)
WANTED: dict[type, str] = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def setting(
    help: str,  # nbclient's word for it
    *,
    choices: Sequence[Any] | Callable[[], Sequence[Any]] = (),
    shown: str | None = None,
    missing: Any = dataclasses.MISSING,
    by_build: bool = False,
) -> dict[str, Any]:
    """A field's metadata: `help` (markdown, one paragraph), the values it may take (`choices`; a
    function where they come from a registry defined after the field, read by `choices_of`),
    how the reference shows its default where the literal would mislead (`shown`; "": none shown,
    the help says it), the value a missing key takes where it is not the field's default
    (`missing`, e.g. one threshold for every class), and `by_build`: filled in by the build,
    never written by the user."""
    listed = choices if callable(choices) else tuple(choices)
    meta: dict[str, Any] = {"help": help, "choices": listed, "shown": shown, "by_build": by_build}
    if missing is not dataclasses.MISSING:
        meta["missing"] = missing
    return meta


def choices_of(f: dataclasses.Field[Any]) -> tuple[Any, ...]:
    """The values the setting `f` may take (() when any value of its type may be given)."""
    listed = f.metadata["choices"]
    return tuple(listed() if callable(listed) else listed)


def settings(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    """The fields of `cls` declared with `setting()`, in declaration order."""
    return tuple(f for f in dataclasses.fields(cls) if "help" in f.metadata)


def default(cls: type, name: str) -> Any:
    """The value the setting `name` of `cls` takes when it is not given (KeyError: it is required)."""
    value = missing_value(next(f for f in dataclasses.fields(cls) if f.name == name))
    if value is dataclasses.MISSING:
        raise KeyError(f"{cls.__name__}.{name} has no default")
    return value


def missing_value(f: dataclasses.Field[Any]) -> Any:
    """The value a missing `f` takes: its `missing`, else its default; `dataclasses.MISSING` when required."""
    if "missing" in f.metadata:
        return f.metadata["missing"]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def found(value: Any) -> str:
    """What a JSON/TOML value is, in the words of the TOML spec (a boolean is not reported as an integer)."""
    for type_, words in ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string")):
        if isinstance(value, type_):
            return words
    if isinstance(value, (list, tuple)):
        return "an array"
    return "a table" if isinstance(value, Mapping) else ("null" if value is None else f"a {type(value).__name__}")


def wrong(key: str, value: Any, wanted: str) -> SpecError:
    """The error for `value` at `key` not being `wanted`; its message shows the value (shortened)."""
    shown = ("true" if value else "false") if isinstance(value, bool) else repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return SpecError(key, f"{shown} must be {wanted} (found {found(value)})")


def typed(key: str, value: Any, type_: type[_T]) -> _T:
    """`value` if it is a `type_`, else a SpecError naming `key`, the type wanted and what was found.

    Integers refuse floats and booleans (TOML's `true` is no count); numbers (`float`) take
    integers; booleans refuse the strings "true"/"false"; strings refuse numbers: nothing is
    converted behind the user's back.
    """
    if type_ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, type_) or (type_ is not bool and isinstance(value, bool)):
        raise wrong(key, value, WANTED[type_])
    return value
