"""kernel_src.errors: one base, the built-in each error replaced, and a pickle round trip."""

from __future__ import annotations

import pickle

import pytest

from kernel_src.errors import BundleError, KernelError, ModelError, ModelRunError, SpecError

CASES = [
    (BundleError("bundle.json: not a bundler manifest"), RuntimeError, {}),
    (SpecError("segmenters[1].tta", "'rot90' is not a TTA view"), ValueError, {"key": "segmenters[1].tta"}),
    (ModelError("model 'unet': weight file unet.safetensors is missing"), RuntimeError, {}),
    (ModelRunError("unet", ValueError("boom")), RuntimeError, {"model": "unet", "detail": "ValueError: boom"}),
]


@pytest.mark.parametrize(("error", "builtin", "attributes"), CASES, ids=lambda v: type(v).__name__)
def test_errors_share_one_base_keep_their_builtin_and_pickle(
    error: KernelError, builtin: type[Exception], attributes: dict[str, str]
) -> None:
    assert isinstance(error, KernelError) and isinstance(error, builtin)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.args == error.args
    for name, value in attributes.items():
        assert getattr(error, name) == value
        assert getattr(copy, name) == value


def test_messages_name_the_input() -> None:
    assert str(SpecError("device", "'tpu' must be one of ['auto', 'cpu', 'cuda']")).startswith("device: ")
    assert SpecError("device", "x").message == "x"
    assert str(ModelRunError("<ensemble>", "no segmentation model is left")) == (
        "model '<ensemble>' failed: no segmentation model is left"
    )
