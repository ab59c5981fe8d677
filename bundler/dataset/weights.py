"""User checkpoints -> bundle weight files, checked against their declared architecture.

A checkpoint may be a plain state dict, a training checkpoint (`{"state_dict" | "model" |
"model_state_dict": ..., "optimizer": ..., "epoch": ...}`), a state dict whose keys carry a
wrapper prefix (`model.`, `module.`, `net.`, `_orig_mod.`: stripped when that makes it fit), a
safetensors file, or (for `kind = "torchscript"`) a TorchScript file. Pickles are read with
`torch.load(weights_only=True)`: nothing in them is executed.

How a checkpoint is shipped depends on its model kind's weights form
(`kernel_src.model_kinds`), each with its converter in `CONVERTERS`: "state_dict" (smp, timm) loads
the checkpoint's tensors into the kind's architecture here, so a mismatch fails at build time
naming the model and the tensor, and writes only the model's own tensors (`<name>.safetensors`,
float16 when `fp16 = true`); "torchscript" verifies the file with `torch.jit.load` and copies it
(`<name>.pt`). Either then gets one forward of a zero image at the size the notebook will feed it
(`forward_check`), so a size its architecture cannot take fails the build, not the dry-run.
"""

from __future__ import annotations

import pickle
import re
import shutil
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bundler.config import ModelEntry
from bundler.dataset.checkpoint_file import ACCEPTED, check_checkpoint_path, sniff
from bundler.errors import WeightsError
from kernel_src.bundle import sha256_file
from kernel_src.errors import ModelError
from kernel_src.model_kinds import get_kind
from kernel_src.models import build_model, check_output, load_state_dict_into
from kernel_src.tta import scaled_size, view_groups

CONTAINER_KEYS = ("state_dict", "model_state_dict", "model")
# where training code keeps averaged weights beside the model (timm's ModelEmaV2 scripts, SWA, ...):
# never taken unless `checkpoint_key` names one, but always named when left behind
AVERAGED_KEYS = (
    "ema",
    "model_ema",
    "state_dict_ema",
    "ema_state_dict",
    "ema_shadow",
    "shadow",
    "swa",
    "swa_model",
    "swa_state_dict",
    "averaged_model",
)
WRAPPER_PREFIXES = ("model.", "module.", "net.", "_orig_mod.")
_MAX_PREFIX_DEPTH = 3

Step = Callable[[str], None]


@dataclass(frozen=True)
class WeightRecord:
    """One weight file of the bundle, as `bundle.json` lists it."""

    file: str
    model: str
    kind: str
    sha256: str
    size: int
    dtype: str
    tensors: int
    parameters: int
    notes: tuple[str, ...] = ()  # what the conversion did that the user should know (not in the manifest)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "model": self.model,
            "kind": self.kind,
            "sha256": self.sha256,
            "size": self.size,
            "dtype": self.dtype,
            "tensors": self.tensors,
            "parameters": self.parameters,
        }


# (entry, key, num_classes, dest folder, step, image size or None) -> the written file's record
Converter = Callable[[ModelEntry, str, int, Path, Step, tuple[int, int] | None], WeightRecord]


def convert(
    entry: ModelEntry,
    key: str,
    num_classes: int,
    dest: Path,
    step: Step | None = None,
    image_size: tuple[int, int] | None = None,
) -> WeightRecord:
    """Write `entry`'s weight file into the folder `dest` and describe it; with `image_size`
    ([inference] image_height x image_width), first run `forward_check` on the loaded model.
    `key` names where the model is declared, for errors: the config file read and the model's key
    (`bundle.toml segmenters[0]`)."""
    check_checkpoint_path(entry, key)
    try:
        kind = get_kind(entry.spec.kind)
    except ModelError as e:
        raise WeightsError(f"{key}: {e}") from None
    return CONVERTERS[kind.weights.name](entry, key, num_classes, dest, step or (lambda _: None), image_size)


def _convert_state_dict(
    entry: ModelEntry, key: str, num_classes: int, dest: Path, say: Step, image_size: tuple[int, int] | None
) -> WeightRecord:
    """The checkpoint's tensors, fitted into the kind's architecture, written as safetensors."""
    say("reading")
    state, taken = read_checkpoint(entry.checkpoint, entry.spec.name, key, entry.checkpoint_key)
    say(f"loading into {_architecture(entry)}")
    try:
        model = build_model(entry.spec, num_classes)
    except ModelError as e:
        raise WeightsError(f"{key}: {e}") from None
    fitted, notes = fit_to_model(state, model.state_dict())
    notes = (*taken, *notes)
    try:
        load_state_dict_into(model, fitted, entry.spec.name)
    except ModelError as e:
        raise WeightsError(f"{e} (checkpoint {entry.checkpoint}, {key})") from None
    if image_size is not None:
        say(f"test forward at {_fed_size(entry, image_size)}")
        forward_check(model, entry, key, num_classes, image_size)
    say("writing")
    return _save_safetensors(entry, model, dest, notes)


def _fed_size(entry: ModelEntry, image_size: tuple[int, int]) -> str:
    h, w = entry.spec.input_size or image_size
    return f"{h}x{w}"


def forward_check(model: nn.Module, entry: ModelEntry, key: str, num_classes: int, image_size: tuple[int, int]) -> None:
    """One zero image through `model` at each size the notebook will feed it (its input_size, else
    the image size; each scale view's size), and the output's shape checked, so an architecture
    that cannot take the declared size (an smp FPN at 64x400: multiples of 32) fails the build
    naming the model and the size, not the dry-run. A model with a preprocess pipeline is fed the
    pipeline's size, which the notebook's own test forward checks at load."""
    if entry.spec.preprocess:
        return
    base = entry.spec.input_size or image_size
    where = f"{key}.input_size" if entry.spec.input_size else "[inference] image_height/image_width"
    model.eval()
    for factor, _ in view_groups(entry.spec.tta):
        h, w = scaled_size(base, factor)
        view = "" if factor == 1.0 else f" (its TTA view 'scale:{factor:g}')"
        try:
            with torch.inference_mode():
                out = model(torch.zeros(1, 3, h, w))
        except Exception as e:  # whatever the architecture raises for a size it cannot take
            need = re.search(r"divisible by \d+", str(e))
            reason = need.group(0) if need else f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
            raise WeightsError(
                f"model {entry.spec.name!r} ({_architecture(entry)}) cannot take one {h}x{w} image{view}: "
                f"{'its architecture needs a height and width ' if need else ''}{reason}; fix {where}"
            ) from None
        if not isinstance(out, torch.Tensor):
            raise WeightsError(
                f"model {entry.spec.name!r}: returns {type(out).__name__}, not a tensor; export a single-output model"
            )
        try:
            check_output(entry.spec.name, entry.role, out, 1, num_classes)
        except ModelError as e:
            raise WeightsError(f"{e} ({key})") from None


def _architecture(entry: ModelEntry) -> str:
    return get_kind(entry.spec.kind).describe(entry.spec)


def read_checkpoint(
    path: Path, name: str, key: str, checkpoint_key: str = ""
) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """(the tensors to ship, notes on which were taken and which candidates were left): see
    `select_state_dict`. `key` names where the model is declared (`bundle.toml segmenters[0]`)."""
    if _is_torchscript(path):
        raise WeightsError(f'model {name!r}: {path} is a TorchScript file; set kind = "torchscript" in {key}')
    form = sniff(path)
    if form == "truncated":
        raise WeightsError(
            f"model {name!r}: {path} is truncated: a zip archive (torch.save) whose end is missing, as an "
            "interrupted copy or download leaves it; copy or download the checkpoint again"
        )
    if form is None:
        raise WeightsError(
            f"model {name!r}: {path} is not a checkpoint torch can read (neither a torch.save zip archive, "
            f"nor a legacy torch.save pickle, nor safetensors); accepted: {ACCEPTED}"
        )
    if path.suffix == ".safetensors" or form == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if checkpoint_key:
            raise WeightsError(
                f"model {name!r}: {path} is a safetensors file, which holds one set of tensors; "
                f"remove {key}.checkpoint_key"
            )
        try:
            return dict(load_file(str(path))), ()
        except (SafetensorError, OSError) as e:
            raise WeightsError(f"model {name!r}: {path} is not a readable safetensors file ({e})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(_unpickling_message(str(e), name, path)) from None
    except Exception as e:  # a damaged file fails anywhere in torch's reader (IndexError, KeyError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise WeightsError(
            f"model {name!r}: {path} is not a checkpoint torch can read ({type(e).__name__}: {first}); "
            f"accepted: {ACCEPTED}"
        ) from None
    return select_state_dict(obj, name, path, checkpoint_key, key)


def _unpickling_message(error: str, name: str, path: Path) -> str:
    """torch's weights_only refusal, reduced to what is at fault and the fix."""
    found = re.search(r"GLOBAL ([\w.]+)", error)
    if found:
        return (
            f"model {name!r}: {path} holds Python objects besides tensors (e.g. {found.group(1)}), and bundler "
            "only loads checkpoints with torch.load(weights_only=True). Re-save the weights alone: "
            "torch.save(model.state_dict(), path)"
        )
    detail = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", error, re.S)
    reason = " ".join((detail.group(1) if detail else error.splitlines()[0] if error else "").split())
    return f"model {name!r}: {path} is not a checkpoint torch can read (unpickling failed: {reason}); " + (
        f"accepted: {ACCEPTED}"
    )


def _tensor_keys(obj: Mapping[Any, Any]) -> list[str]:
    """Top-level keys of a checkpoint whose value holds tensors (a state dict, or a container of one)."""
    keys = []
    for k, v in obj.items():
        if isinstance(v, Mapping) and (
            any(isinstance(t, torch.Tensor) for t in v.values())
            or any(isinstance(v.get(c), Mapping) for c in CONTAINER_KEYS)
        ):
            keys.append(str(k))
    return keys


def _described(keys: list[str]) -> str:
    return ", ".join(f"{k!r}" + (" (averaged weights)" if k in AVERAGED_KEYS else "") for k in keys)


def select_state_dict(
    obj: Any, name: str, path: Path, checkpoint_key: str = "", key: str = ""
) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """The tensors to ship from a loaded checkpoint, and notes saying which were taken.

    `checkpoint_key` given: the tensors under that top-level key (itself a state dict or a training
    checkpoint holding one); a key that is absent or holds no tensors is refused, listing the keys
    that do. Not given: `extract_state_dict`'s choice; when the checkpoint also holds other tensor
    sets (EMA or SWA weights beside `model`), a note names the key taken and the candidates left.
    """
    where = f"{key}.checkpoint_key" if key else "checkpoint_key"
    if checkpoint_key:
        if not isinstance(obj, Mapping):
            raise WeightsError(
                f"model {name!r}: {path} holds a {type(obj).__name__}, which has no keys; remove {where}"
            )
        candidates = _tensor_keys(obj)
        inner = obj.get(checkpoint_key)
        if checkpoint_key not in candidates or not isinstance(inner, Mapping):
            found = _described(candidates) if candidates else "none"
            state = "is not in it" if checkpoint_key not in obj else "holds no tensors"
            raise WeightsError(
                f"model {name!r}: {where} = {checkpoint_key!r} {state} ({path}); keys holding tensors: {found}"
            )
        state_dict = extract_state_dict(inner, name, path)
        left = [k for k in candidates if k != checkpoint_key]
        note = f"took the {len(state_dict)} tensors under {checkpoint_key!r} (checkpoint_key)"
        return state_dict, (note + (f"; left {_described(left)}" if left else ""),)
    state_dict = extract_state_dict(obj, name, path)
    if not isinstance(obj, Mapping):
        return state_dict, ()
    candidates = _tensor_keys(obj)
    taken = next((c for c in CONTAINER_KEYS if c in candidates and isinstance(obj.get(c), Mapping)), None)
    left = [k for k in candidates if k != taken]
    if taken is None or not left:
        return state_dict, ()
    averaged = next((k for k in left if k in AVERAGED_KEYS), left[0])
    return state_dict, (
        f"took the {len(state_dict)} tensors under {taken!r}; left {_described(left)}: "
        f"set {where} = {averaged!r} to ship those instead",
    )


def extract_state_dict(obj: Any, name: str, path: Path) -> dict[str, torch.Tensor]:
    """The model's tensors from a state dict or a training checkpoint holding one."""
    if not isinstance(obj, Mapping):
        raise WeightsError(
            f"model {name!r}: {path} holds a {type(obj).__name__}, not a state dict; "
            "save it with torch.save(model.state_dict(), path)"
        )
    for container in CONTAINER_KEYS:
        inner = obj.get(container)
        if isinstance(inner, Mapping):
            found = {str(k): v for k, v in inner.items() if isinstance(v, torch.Tensor)}
            if found:
                return found
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if tensors and len(tensors) == len(obj):
        return tensors
    keys = ", ".join(repr(str(k)) for k in list(obj)[:8])
    candidates = _tensor_keys(obj)
    hint = f"; keys holding tensors: {_described(candidates)}: name one as checkpoint_key" if candidates else ""
    raise WeightsError(
        f"model {name!r}: {path} has no state dict (top-level keys: {keys}); expected a state dict or a "
        f"training checkpoint with one under {' / '.join(repr(c) for c in CONTAINER_KEYS)}{hint}"
    )


def fit_to_model(
    state: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """`state` with a wrapper prefix stripped when that makes its keys those of the model.

    When no prefix fits exactly, the candidate closest to the model is returned so that the
    strict load reports the first tensor at fault.
    """
    expected = set(own)
    best: tuple[int, str, dict[str, torch.Tensor], int] | None = None
    for prefix, sub, dropped in _prefix_candidates(state):
        keys = set(sub)
        missing = expected - keys
        if keys <= expected and all(k.endswith("num_batches_tracked") for k in missing):
            filled = dict(sub)
            for k in missing:  # older checkpoints lack BatchNorm's counters; the model's are harmless
                filled[k] = own[k].clone()
            notes = []
            if prefix:
                notes.append(f"stripped the key prefix {prefix!r}")
            if dropped:
                notes.append(f"ignored {dropped} tensors outside {prefix!r}")
            return filled, tuple(notes)
        overlap = len(keys & expected)
        if best is None or overlap > best[0]:
            best = (overlap, prefix, sub, dropped)
    assert best is not None
    return best[2], ()


def _prefix_candidates(state: dict[str, torch.Tensor]) -> Iterator[tuple[str, dict[str, torch.Tensor], int]]:
    """(prefix, state with it stripped, tensors dropped for not carrying it), shortest first."""
    yield "", state, 0
    frontier: list[tuple[str, dict[str, torch.Tensor], int]] = [("", state, 0)]
    for _ in range(_MAX_PREFIX_DEPTH):
        deeper = []
        for prefix, sub, dropped in frontier:
            firsts = {k.split(".", 1)[0] + "." for k in sub if "." in k}
            common = {next(iter(firsts))} if len(firsts) == 1 and all("." in k for k in sub) else set()
            for p in (*WRAPPER_PREFIXES, *sorted(common - set(WRAPPER_PREFIXES))):
                stripped = {k[len(p) :]: v for k, v in sub.items() if k.startswith(p)}
                if stripped:
                    item = (prefix + p, stripped, dropped + len(sub) - len(stripped))
                    deeper.append(item)
                    yield item
        frontier = deeper


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in zf.namelist())


def _save_safetensors(entry: ModelEntry, model: nn.Module, dest: Path, notes: tuple[str, ...]) -> WeightRecord:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        t = v.detach()
        if entry.fp16 and t.is_floating_point():
            t = t.to(torch.float16)
        tensors[k] = t.contiguous().clone()  # own storage: safetensors refuses shared tensors
    path = dest / entry.spec.file
    # one metadata key: safetensors writes a map's keys in no fixed order, and the bytes must not vary
    save_file(tensors, str(path), metadata={"format": "pt"})
    return _record(entry, path, tensors, sum(p.numel() for p in model.parameters()), notes)


def _record(
    entry: ModelEntry, path: Path, tensors: Mapping[str, torch.Tensor], parameters: int, notes: tuple[str, ...]
) -> WeightRecord:
    """The manifest entry of a written weight file."""
    floats = {str(t.dtype).removeprefix("torch.") for t in tensors.values() if t.is_floating_point()}
    return WeightRecord(
        file=entry.spec.file,
        model=entry.spec.name,
        kind=entry.spec.kind,
        sha256=sha256_file(path),
        size=path.stat().st_size,
        dtype=",".join(sorted(floats)) or "none",
        tensors=len(tensors),
        parameters=parameters,
        notes=notes,
    )


def _copy_torchscript(
    entry: ModelEntry, key: str, num_classes: int, dest: Path, say: Step, image_size: tuple[int, int] | None
) -> WeightRecord:
    """The TorchScript file, verified by loading it and checked by a forward, copied as it is."""
    if entry.checkpoint_key:
        raise WeightsError(
            f"model {entry.spec.name!r}: a TorchScript file holds one module; remove bundle.toml {key}.checkpoint_key"
        )
    say("verifying TorchScript")
    try:
        module = torch.jit.load(str(entry.checkpoint), map_location="cpu")  # type: ignore[no-untyped-call]
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(
            f"model {entry.spec.name!r}: {entry.checkpoint} is not a TorchScript file ({first}); save one with "
            f"torch.jit.save(torch.jit.trace(model, example), path), or set {key}.kind to the "
            "model's library"
        ) from None
    if image_size is not None:
        say(f"test forward at {_fed_size(entry, image_size)}")
        forward_check(module, entry, key, num_classes, image_size)
    say("copying")
    path = dest / entry.spec.file
    shutil.copyfile(entry.checkpoint, path)
    notes = ("fp16 is ignored for TorchScript: the file is copied as it is",) if entry.fp16 else ()
    return _record(entry, path, module.state_dict(), sum(p.numel() for p in module.parameters()), notes)


# a model kind's weights form (kernel_src.model_kinds.WeightsForm.name) -> how its checkpoint is shipped
CONVERTERS: dict[str, Converter] = {"state_dict": _convert_state_dict, "torchscript": _copy_torchscript}
