"""The two exception trees: kernel_src's under `KernelError` (each keeping the built-in it replaced),
bundler's under `BundlerError` (each with an exit code); every class defined in one of the two
errors modules, and every one surviving a pickle round trip."""

from __future__ import annotations

import ast
import inspect
import pickle
from pathlib import Path

import pytest

import bundler.errors
import kernel_src.errors
from bundler.errors import BundlerError, ConfigError, PreprocessError, TargetPythonError
from kernel_src.errors import (
    BatchError,
    BundleError,
    InputError,
    KernelError,
    ModelError,
    ModelRunError,
    SpecError,
    SubmissionFormatError,
)

ROOT = Path(__file__).resolve().parent.parent

CASES = [
    (BundleError("bundle.json: not a bundler manifest"), RuntimeError, {}),
    (InputError("test.csv: rows hold 783 pixel columns, but input.shape = [28, 28] needs 784"), RuntimeError, {}),
    (SpecError("segmenters[1].tta", "'rot90' is not a TTA view"), ValueError, {"key": "segmenters[1].tta"}),
    (ModelError("model 'unet': weight file unet.safetensors is missing"), RuntimeError, {}),
    (ModelRunError("unet", ValueError("boom")), RuntimeError, {"model": "unet", "detail": "ValueError: boom"}),
    (SubmissionFormatError("sample.csv line 2: key 'a.jpg_5' is not a class"), ValueError, {}),
    (BatchError(4, ValueError("merge")), RuntimeError, {"images": 4, "detail": "ValueError: merge"}),
]


def _assert_pickles(error: Exception) -> Exception:
    copy: Exception = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.args == error.args
    return copy


@pytest.mark.parametrize(("error", "builtin", "attributes"), CASES, ids=lambda v: type(v).__name__)
def test_errors_share_one_base_keep_their_builtin_and_pickle(
    error: KernelError, builtin: type[Exception], attributes: dict[str, str]
) -> None:
    assert isinstance(error, KernelError) and isinstance(error, builtin)
    copy = _assert_pickles(error)
    for name, value in attributes.items():
        assert getattr(error, name) == value
        assert getattr(copy, name) == value


def _classes(module: object, root: type[Exception]) -> list[type[Exception]]:
    return [c for _, c in inspect.getmembers(module, inspect.isclass) if issubclass(c, root)]


def test_every_kernel_error_is_a_case_above() -> None:
    assert {type(error) for error, _, _ in CASES} == set(_classes(kernel_src.errors, KernelError)) - {KernelError}


@pytest.mark.parametrize("cls", _classes(bundler.errors, BundlerError), ids=lambda c: c.__name__)
def test_bundler_errors_pickle_and_have_an_exit_code(cls: type[BundlerError]) -> None:
    error = cls(f"{cls.__name__.lower()}: the input at fault; the fix")
    _assert_pickles(error)
    assert isinstance(error.exit_code, int) and error.exit_code > 0


def test_errors_that_left_their_modules_keep_their_place_and_exit_code() -> None:
    assert issubclass(PreprocessError, bundler.errors.BuildError) and PreprocessError.exit_code == 1
    assert issubclass(TargetPythonError, BundlerError) and TargetPythonError.exit_code == 1
    assert ConfigError.exit_code == 2


def _exception_classes_outside_the_errors_modules() -> list[str]:
    """'path: Name' of every class deriving from an exception (by its bases' names) defined in
    bundler/ or kernel_src/ outside their errors.py."""
    found = []
    for package in ("bundler", "kernel_src"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "errors.py" and path.parent == ROOT / package:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef):
                    bases = [ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases]
                    if any(b.endswith(("Error", "Exception")) for b in bases):
                        found.append(f"{path.relative_to(ROOT)}: {node.name}")
    return found


def test_every_exception_class_lives_in_its_tree() -> None:
    assert _exception_classes_outside_the_errors_modules() == []


def test_messages_name_the_input() -> None:
    assert str(SpecError("device", "'tpu' must be one of ['auto', 'cpu', 'cuda']")).startswith("device: ")
    assert SpecError("device", "x").message == "x"
    assert str(ModelRunError("<ensemble>", "no segmentation model is left")) == (
        "model '<ensemble>' failed: no segmentation model is left"
    )
