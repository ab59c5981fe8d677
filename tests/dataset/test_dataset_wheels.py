"""`bundler build` with the real `vendor_wheels` on a local wheelhouse built at test time (no network)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from bundler.config import load_config
from bundler.dataset.dataset_folder import build_dataset
from bundler.dataset.wheels import fetch as wheels_fetch
from bundler.dataset.wheels.rehearse import SKIP_ENV, find_target_python
from bundler.errors import CredentialError, WheelsError
from tests.projects import build, captured, leftovers, snapshot, write_bundle
from tests.wheelhouse import make_wheel

TARGET = """requirements = ["tinyapp==1.0"]
find_links = ["house"]
no_index = true"""


pytestmark = pytest.mark.usefixtures("no_rehearsal")


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


@pytest.mark.slow
@pytest.mark.skipif(find_target_python("3.12") is None, reason="no Python 3.12 interpreter here")
def test_a_dropped_private_wheel_is_vendored_with_its_reason_and_rehearsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SKIP_ENV, raising=False)
    make_wheel(tmp_path / "wheels", "private-pkg", "0.3.1", ["numpy>=1.26"])
    make_wheel(tmp_path / "wheels", "stray", "1.0")  # lying there by accident: not shipped
    cfg = load_config(write_bundle(tmp_path, target='requirements = ["private-pkg"]\nno_index = true'))
    _, text = build(cfg)
    manifest = json.loads((cfg.dataset.out / "bundle.json").read_text())
    assert [(w["file"], w["reason"]) for w in manifest["wheels"]] == [
        ("private_pkg-0.3.1-py3-none-any.whl", "requested in target.requirements; from the local wheelhouse")
    ]
    assert "offline install rehearsed" in text
    assert "stray-1.0-py3-none-any.whl in the local wheelhouse is not shipped" in text
    assert (tmp_path / "wheels" / ".gitignore").read_text() == "*\n!.gitignore\n"

    make_wheel(tmp_path / "wheels", "private-pkg", "0.3.2")  # a new drop replaces the old one
    (tmp_path / "wheels" / "private_pkg-0.3.1-py3-none-any.whl").unlink()
    again, _ = build(cfg)
    assert not again.up_to_date  # the wheelhouse's contents are an input
    assert [w["version"] for w in again.manifest["wheels"]] == ["0.3.2"]


def test_a_dropped_wheel_for_another_python_fails_naming_it_and_writes_nothing(tmp_path: Path) -> None:
    wrong = make_wheel(tmp_path / "wheels", "private-pkg", "1.0", tag="cp311-cp311-manylinux_2_17_x86_64")
    cfg = load_config(write_bundle(tmp_path, target='requirements = ["private-pkg"]\nno_index = true'))
    with pytest.raises(WheelsError) as caught:
        build(cfg)
    message = str(caught.value)
    assert str(wrong) in message and "does not fit cp312" in message and "Fix: build it for the target" in message
    assert not cfg.dataset.out.exists()
    assert leftovers(cfg.dataset.out) == []


def test_a_cached_download_is_reused_from_the_wheelhouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    house = wheelhouse(tmp_path)
    cfg = load_config(write_bundle(tmp_path, target=TARGET))
    build(cfg)
    cached = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "wheels").glob("*.whl")}
    assert sorted(cached) == ["tinyapp-1.0-py3-none-any.whl", "tinydep-1.2-py3-none-any.whl"]
    again, _ = build(cfg)
    assert again.up_to_date  # what the build caches in the wheelhouse is not an input

    for wheel in house.glob("*.whl"):  # the original source is gone: only wheels/ can serve them
        wheel.unlink()

    def no_pip(args: list[str]) -> object:
        raise AssertionError(f"pip was called again: {args}")

    monkeypatch.setattr(wheels_fetch, "_pip", no_pip)
    console, buf = captured()
    forced = build_dataset(cfg, console=console, force=True)
    assert [w["file"] for w in forced.manifest["wheels"]] == sorted(cached)
    assert buf.getvalue().count("(cached,") == 2
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "wheels").glob("*.whl")} == cached
