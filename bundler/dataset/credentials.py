"""Credentials never leave the machine: refuse credential files and key material in the inputs.

Two checks, both raising `CredentialError` with the file at fault:
- by name: `kaggle.json`, `.env`, `*.pem`, `id_rsa*`, `*token*`, `.netrc`, `credentials*`;
- by content: text that looks like a Kaggle key (`kaggle.json`'s `"key"`, `KGAT_` tokens,
  `KAGGLE_KEY=`), an AWS key (`AKIA...`, `aws_secret_access_key`), a Hugging Face token
  (`hf_...`) or a private key block. Binary files (checkpoints) are scanned too: the patterns
  are long enough that random bytes do not match them.

Wheels are zip archives, so `scan_wheel` looks inside them: members named like a credential
file, and small text members whose content holds a key.

Checkpoints are looked into as well (`scan_checkpoint`), since a key pickled as an attribute
(`cfg = {"username": ..., "key": "<32 hex>"}` on a TorchScript module, a `.pth`'s metadata) never
looks like JSON text: every string of every pickle in the archive (TorchScript's `data.pkl`,
`constants.pkl`, debug pickles; a `.pth`'s `data.pkl` or legacy pickle stream) is read from
pickletools' opcodes by a small symbolic machine that rebuilds dicts, lists and objects' state
but never calls or imports anything (nothing is unpickled), and text members (`code/`, `extra/`)
are read as text. A key-shaped value (16+ characters of key alphabet, letters and digits mixed)
under a key-like name (`key`, `token`, `secret`, `password`, ...), a `username` beside a 32-hex
`key` (kaggle.json's pair), or any string matching the patterns above is refused, naming its
path inside the checkpoint (`cfg.kaggle.key`). The value itself is never printed.
"""

from __future__ import annotations

import fnmatch
import io
import json
import pickletools
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

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


# ---- inside checkpoints: the strings a pickle holds, with their path, never unpickled ----

KEY_NAMES = frozenset(
    {"key", "apikey", "token", "secret", "password", "passwd", "pwd", "credential", "credentials", "auth"}
)
_KEY_SHAPED = re.compile(r"[A-Za-z0-9_\-+/=]{16,}|eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-.]+")  # a JWT has dots
# snake/kebab identifiers (resnet34_imagenet1k_v2, model-ema-v2) are names, not secrets
_IDENTIFIER = re.compile(r"[a-z][a-z0-9]*(?:[_\-][a-z0-9]+)+")
_KAGGLE_KEY = re.compile(r"[0-9a-f]{32}")
_TEXT_PAIR = re.compile(r"""["']?([A-Za-z_][\w.-]{0,63})["']?\s*[:=]\s*["']([^"'\s]{16,512})["']""")
_PICKLE_LIMIT = 256 << 20  # a pickle bigger than this is not metadata; the byte scan still covers it
_STRING_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
_BYTES_OPS = {"BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"}
_TENSOR_REBUILDERS = ("torch._utils._rebuild", "torch.FloatStorage")


def key_like_name(name: str) -> bool:
    """`name` (`api_key`, `hfToken`, `DB-PASSWORD`) has a word that names a credential."""
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name).lower()
    return any(w in KEY_NAMES for w in re.split(r"[^a-z0-9]+", words)) or words.replace("_", "") in KEY_NAMES


def key_shaped(value: str) -> bool:
    """`value` could be a secret: 16+ characters of a key's alphabet (no dots or spaces, so no
    tensor name, path or sentence), letters and digits mixed, and not a lowercase identifier."""
    return (
        bool(_KEY_SHAPED.fullmatch(value))
        and any(c.isdigit() for c in value)
        and any(c.isalpha() for c in value)
        and not _IDENTIFIER.fullmatch(value)
        and not value.startswith("/")
    )


class _Mark:
    """pickle's MARK on the symbolic stack."""


class _Dict:
    """A dict the pickle would build: its (key, value) pairs in order (keys may be any node)."""

    def __init__(self, items: list[tuple[Any, Any]] | None = None) -> None:
        self.items = items or []


class _Obj:
    """An object the pickle would build (GLOBAL then REDUCE/NEWOBJ/BUILD): its callable's name and
    the arguments and state given to it, walked as part of the same path. Nothing is called."""

    def __init__(self, name: str, parts: list[Any]) -> None:
        self.name = name
        self.parts = parts
        self.items: list[tuple[Any, Any]] = []  # SETITEM(S) on it (an OrderedDict made by REDUCE)


def _pickle_roots(data: bytes) -> Iterator[Any]:
    """The top-level objects of the pickles concatenated in `data`, rebuilt symbolically."""
    at = 0
    while at < len(data):
        root, at = _symbolic_load(data, at)
        yield root


def _symbolic_load(data: bytes, start: int) -> tuple[Any, int]:
    """One pickle from `start`: its rebuilt root and where it ended. Raises ValueError when the
    bytes are not a pickle (pickletools' own errors), which callers treat as "not a pickle"."""
    stack: list[Any] = []
    memo: dict[int, Any] = {}

    def since_mark() -> list[Any]:
        for i in range(len(stack) - 1, -1, -1):
            if isinstance(stack[i], _Mark):
                items = stack[i + 1 :]
                del stack[i:]
                return items
        raise ValueError("MARK missing")

    def add_items(target: Any, pairs: list[tuple[Any, Any]]) -> None:
        if isinstance(target, (_Dict, _Obj)):
            target.items.extend(pairs)

    stream = io.BytesIO(data)
    stream.seek(start)
    for op, raw, pos in pickletools.genops(stream):  # positions are the stream's: absolute
        name = op.name
        arg: Any = raw  # its type depends on the opcode
        if name == "STOP":
            return (stack[-1] if stack else None), (pos or 0) + 1
        if name in _STRING_OPS:
            stack.append(arg if isinstance(arg, str) else str(arg))
        elif name in _BYTES_OPS:
            stack.append(bytes(arg))
        elif name == "MARK":
            stack.append(_Mark())
        elif name in ("EMPTY_DICT",):
            stack.append(_Dict())
        elif name == "DICT":
            items = since_mark()
            stack.append(_Dict(list(zip(items[::2], items[1::2], strict=False))))
        elif name in ("EMPTY_LIST", "EMPTY_SET"):
            stack.append([])
        elif name in ("LIST", "TUPLE", "FROZENSET"):
            stack.append(since_mark())
        elif name == "EMPTY_TUPLE":
            stack.append([])
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = stack[-n:]
            del stack[-n:]
            stack.append(items)
        elif name == "APPEND":
            value = stack.pop()
            if isinstance(stack[-1], list):
                stack[-1].append(value)
        elif name in ("APPENDS", "ADDITEMS"):
            items = since_mark()
            if isinstance(stack[-1], list):
                stack[-1].extend(items)
        elif name == "SETITEM":
            value, key = stack.pop(), stack.pop()
            add_items(stack[-1], [(key, value)])
        elif name == "SETITEMS":
            items = since_mark()
            add_items(stack[-1], list(zip(items[::2], items[1::2], strict=False)))
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = stack[-1]
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(int(arg)))
        elif name in ("GLOBAL", "INST"):
            text = str(arg).replace(" ", ".")
            stack.append(_Obj(text, since_mark()) if name == "INST" else text)
        elif name == "STACK_GLOBAL":
            qual, module = stack.pop(), stack.pop()
            stack.append(f"{module}.{qual}")
        elif name in ("REDUCE", "NEWOBJ"):
            args, func = stack.pop(), stack.pop()
            stack.append(_Obj(str(func), [args]))
        elif name == "NEWOBJ_EX":
            kwargs, args, cls = stack.pop(), stack.pop(), stack.pop()
            stack.append(_Obj(str(cls), [args, kwargs]))
        elif name == "OBJ":
            items = since_mark()
            stack.append(_Obj(str(items[0]) if items else "", items[1:]))
        elif name == "BUILD":
            state = stack.pop()
            if isinstance(stack[-1], _Obj):
                stack[-1].parts.append(state)
            elif isinstance(stack[-1], _Dict) and isinstance(state, _Dict):
                stack[-1].items.extend(state.items)
        elif name == "BINPERSID":
            stack[-1] = None  # a tensor's storage: bytes elsewhere in the archive
        elif name == "PERSID":
            stack.append(None)
        elif name in ("POP",):
            stack.pop()
        elif name == "POP_MARK":
            since_mark()
        elif name == "DUP":
            stack.append(stack[-1])
        elif name in ("PROTO", "FRAME"):
            continue
        else:  # numbers, None, booleans, extension codes, out-of-band buffers: nothing to look at
            stack.append(arg if isinstance(arg, (int, float)) else None)
    raise ValueError("pickle without STOP")


def _join(path: str, key: Any) -> str:
    """`cfg` + `key` -> `cfg.key`; `constants.pkl:` + `x` -> `constants.pkl:x`; an int index -> `[0]`."""
    if isinstance(key, str):
        return f"{path}.{key}" if path and not path.endswith(":") else f"{path}{key}"
    return f"{path}[{key}]" if isinstance(key, int) else f"{path}[...]"


def _found_in_pickle(root: Any, where: str = "") -> tuple[str, str] | None:
    """(the path inside the pickle, what it looks like) of the first credential in `root`, or None."""
    todo: list[tuple[Any, str, str]] = [(root, where, "")]  # (node, its path, the name it sits under)
    seen: set[int] = set()
    while todo:
        node, path, under = todo.pop()
        if isinstance(node, str):
            what = find_key(node.encode("utf-8", "replace"))
            if what is None and under and key_like_name(under) and key_shaped(node):
                what = f"a secret (a key-shaped value under the name {under!r})"
            if what is not None:
                return path or "(the top level)", what
            continue
        if isinstance(node, bytes):
            what = find_key(node)
            if what is not None:
                return path or "(the top level)", what
            continue
        if id(node) in seen or not isinstance(node, (list, _Dict, _Obj)):
            continue
        seen.add(id(node))
        if isinstance(node, _Obj) and node.name.startswith(_TENSOR_REBUILDERS):
            continue  # a tensor: its data are numbers, scanned as bytes by check_content
        items = node.items if isinstance(node, (_Dict, _Obj)) else []
        names = {k: v for k, v in items if isinstance(k, str)}
        user, key = names.get("username"), names.get("key")
        if isinstance(user, str) and isinstance(key, str) and _KAGGLE_KEY.fullmatch(key):
            return _join(path, "key"), "a Kaggle API key (a username beside a 32-hex key, as in kaggle.json)"
        for k, v in reversed(items):
            todo.append((v, _join(path, k), k if isinstance(k, str) else under))
            if isinstance(k, str) and find_key(k.encode("utf-8", "replace")) is not None:
                return _join(path, "<a key used as a name>"), str(find_key(k.encode("utf-8", "replace")))
        if isinstance(node, list):
            todo.extend((v, _join(path, i), under) for i, v in reversed(list(enumerate(node))))
        elif isinstance(node, _Obj):  # its arguments and state belong to the same name (an attribute's value)
            parts = [v for part in node.parts for v in (part if isinstance(part, list) else [part])]
            todo.extend((v, path, under) for v in reversed(parts))
    return None


def _found_in_text(text: str) -> tuple[str, str] | None:
    """(the name, what it looks like) of a key in source or config text (`api_key = "..."`), or None."""
    what = find_key(text.encode("utf-8", "replace"))
    if what is not None:
        return "", what
    for m in _TEXT_PAIR.finditer(text):
        if key_like_name(m.group(1)) and key_shaped(m.group(2)):
            return m.group(1), f"a secret (a key-shaped value under the name {m.group(1)!r})"
    return None


def checkpoint_credential(path: Path) -> tuple[str, str] | None:
    """(where inside the checkpoint, what it looks like) of the first credential in `path`'s
    non-tensor data, or None: every pickle and text member of a zip checkpoint (torch.save,
    TorchScript), the pickles of a legacy torch.save file, a safetensors header's metadata."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                member = info.filename
                inner = member.split("/", 1)[-1]
                if info.is_dir() or inner.startswith(("data/", ".data/")) or info.file_size > _PICKLE_LIMIT:
                    continue  # tensor storages: numbers (and scanned as raw bytes anyway)
                data = zf.read(info)
                if member.endswith(("pkl", ".debug_pkl")):
                    try:
                        for root in _pickle_roots(data):
                            found = _found_in_pickle(root, "" if inner == "data.pkl" else f"{inner}:")
                            if found is not None:
                                return found
                    except (ValueError, IndexError, KeyError, TypeError):
                        continue  # not a pickle after all: the raw byte scan still looked at it
                else:
                    hit = _found_in_text(data.decode("utf-8", "replace"))
                    if hit is not None:
                        return (f"{inner}: {hit[0]}" if hit[0] else inner), hit[1]
        return None
    with path.open("rb") as f:
        head = f.read(_PICKLE_LIMIT)
    if head[:1] == b"\x80":  # the legacy torch.save format: pickles, then raw storages
        try:
            for root in _pickle_roots(head):
                found = _found_in_pickle(root)
                if found is not None:
                    return found
        except (ValueError, IndexError, KeyError, TypeError):
            pass  # the raw storages after the pickles
        return None
    size = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
    if 0 < size <= len(head) - 8 and head[8:9] == b"{":  # safetensors: a JSON header
        try:
            header = json.loads(head[8 : 8 + size])
        except ValueError:
            return None
        meta = header.get("__metadata__") if isinstance(header, dict) else None
        if isinstance(meta, dict):
            root = _Dict([(str(k), v) for k, v in meta.items() if isinstance(v, str)])
            return _found_in_pickle(root, "__metadata__")
    return None


def scan_checkpoint(path: Path, role: str) -> None:
    """Refuse a checkpoint whose non-tensor data holds a credential, naming where inside it."""
    found = checkpoint_credential(path)
    if found is not None:
        where, what = found
        raise CredentialError(
            f"{role}: {path} holds what looks like {what} at {where} inside the checkpoint; credentials "
            "never go into a bundle. Remove it (save model.state_dict() alone, or delete the attribute "
            "before torch.jit.save) and build again."
        )
