"""`bundler build` with the real `vendor_wheels` on a local wheelhouse built at test time (no network)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from bundler.config import load_config
from bundler.errors import CredentialError
from tests.test_dataset import build, leftovers, snapshot, write_bundle
from tests.wheelhouse import make_wheel

TARGET = """requirements = ["tinyapp==1.0"]
find_links = ["house"]
no_index = true"""


@pytest.fixture(autouse=True)
def no_rehearsal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The offline-install rehearsal is the wheels module's subject (tests/test_wheels.py)."""
    monkeypatch.setenv("BUNDLER_SKIP_REHEARSAL", "1")


def wheelhouse(root: Path) -> Path:
    house = root / "house"
    make_wheel(house, "tinyapp", "1.0", ["tinydep>=1", "numpy>=1.26"])
    make_wheel(house, "tinydep", "1.2")
    return house


@pytest.mark.slow
def test_closure_minus_baseline_lands_flat_in_the_folder(tmp_path: Path) -> None:
    wheelhouse(tmp_path)
    cfg = load_config(write_bundle(tmp_path, target=TARGET))
    result, text = build(cfg)
    out = cfg.dataset.out
    manifest = json.loads((out / "bundle.json").read_text())
    assert [(w["name"], w["version"]) for w in manifest["wheels"]] == [("tinyapp", "1.0"), ("tinydep", "1.2")]
    assert manifest["requirements"] == ["tinyapp==1.0"]
    for w in manifest["wheels"]:
        assert (out / w["file"]).stat().st_size == w["size"]
        assert w["reason"]
    assert "required by tinyapp" in next(w["reason"] for w in manifest["wheels"] if w["name"] == "tinydep")
    assert all(p.is_file() for p in out.iterdir())  # flat
    assert any(name == "numpy" for name, _ in result.from_baseline)  # the image has it: not vendored
    assert "Already in the image" in text and "numpy" in text
    assert "tinydep 1.2: required by tinyapp" in text

    again, text = build(cfg)
    assert again.up_to_date and "is up to date" in text


def test_a_wheel_carrying_kaggle_json_is_refused_before_the_swap(tmp_path: Path) -> None:
    house = wheelhouse(tmp_path)
    cfg = load_config(write_bundle(tmp_path, target=TARGET))
    build(cfg)
    before = snapshot(cfg.dataset.out)

    leaky = make_wheel(house, "tinydep", "1.3")
    with zipfile.ZipFile(leaky, "a") as zf:
        zf.writestr("tinydep/kaggle.json", '{"username": "me", "key": "0123456789abcdef0123456789abcdef"}')
    cfg2 = load_config(
        write_bundle(tmp_path, target=TARGET.replace('"tinyapp==1.0"', '"tinyapp==1.0", "tinydep==1.3"'))
    )
    with pytest.raises(CredentialError, match=r"wheel tinydep-1\.3-py3-none-any\.whl: carries 'tinydep/kaggle\.json'"):
        build(cfg2)
    assert snapshot(cfg.dataset.out) == before
    assert leftovers(cfg.dataset.out) == []
