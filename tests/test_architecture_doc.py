"""docs/ARCHITECTURE.md's examples carry exactly the keys the code writes, and its module tables
name every module there is (and none that is gone)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bundler.dataset.manifest import build_manifest
from bundler.dataset.weights import WeightRecord
from bundler.dataset.wheels.vendor import VendoredWheel
from bundler.notebook.parameters import notebook_config, parse_assignment
from kernel_src.notebook import CONFIG_KEYS
from kernel_src.run import run
from kernel_src.spec import GatingSpec, InferenceSpec, ModelSpec, PostprocessSpec
from tests.projects import demo_cfg, write_fake_manifest
from tests.tiny import tiny_spec, write_image, write_sample

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC, flags=re.S)


def _json_block(first_key: str) -> dict[str, Any]:
    for block in _blocks("json"):
        data = json.loads(block)
        if first_key in data:
            return dict(data)
    raise AssertionError(f"no json example with {first_key!r} in docs/ARCHITECTURE.md")


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_bundle_json_example_has_the_manifest_keys(tmp_path: Path) -> None:
    doc = _json_block("bundle")
    assert list(doc) == list(build_manifest(demo_cfg(tmp_path, manifest=False), [], [], "fingerprint"))
    assert set(doc["wheels"][0]) == _fields(VendoredWheel)
    assert set(doc["weights"][0]) == _fields(WeightRecord) - {"notes"}


def test_config_example_has_the_rendered_keys(tmp_path: Path) -> None:
    (source,) = [b for b in _blocks("python") if b.startswith("CONFIG = ")]
    doc = parse_assignment(source, "CONFIG")
    cfg = demo_cfg(tmp_path, manifest=False)
    rendered = notebook_config(cfg, write_fake_manifest(cfg))
    assert list(doc) == list(rendered) == list(CONFIG_KEYS)
    assert list(doc["inference"]) == list(rendered["inference"]) == [f.name for f in dataclasses.fields(InferenceSpec)]
    assert set(doc["inference"]["segmenters"][0]) == _fields(ModelSpec)
    assert set(doc["inference"]["gating"]) == _fields(GatingSpec)
    assert set(doc["inference"]["postprocess"]) == _fields(PostprocessSpec)


def _shape(value: Any, depth: int) -> Any:
    """The nested key structure of `value` down to `depth` levels of dicts."""
    if depth == 0 or not isinstance(value, dict):
        return None
    return {k: _shape(v, depth - 1) for k, v in value.items()}


@pytest.fixture(scope="module")
def real_profile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("profile")
    spec: InferenceSpec = tiny_spec(root / "bundle", gating={"mode": "per_class", "thresholds": [0.5] * 4})
    rng = np.random.default_rng(0)
    ids = [f"img{i}.jpg" for i in range(3)]
    for image_id in ids:
        write_image(root / "test" / image_id, rng.integers(0, 255, (spec.image_height, spec.image_width, 3), np.uint8))
    write_sample(root / "sample.csv", ids)
    result = run(
        spec,
        bundle_dir=root / "bundle",
        test_dir=root / "test",
        sample_submission=root / "sample.csv",
        out_dir=root / "out",
        progress=False,
    )
    return result.profile


def test_profile_example_has_the_keys_a_run_writes(real_profile: dict[str, Any]) -> None:
    doc = _json_block("call_sizes")
    assert list(doc) == list(real_profile)
    nested = ("devices", "gating", "nonfinite_outputs", "guard", "problems", "counts", "problem_examples", "resources")
    for section in nested:
        assert _shape(doc[section], 1) == _shape(real_profile[section], 1), section
    one_doc = next(iter(doc["call_sizes"].values()))
    one_real = next(iter(real_profile["call_sizes"].values()))
    assert set(one_doc) == set(one_real)
    assert set(doc["stages"]) <= set(real_profile["stages"])
    assert {tuple(s) for s in doc["stages"].values()} == {("seconds", "calls")}


def test_module_tables_list_every_module() -> None:
    listed = set(re.findall(r"^\| `((?:bundler|kernel_src)/[\w/]+\.py)` \|", DOC, flags=re.M))
    present = {
        p.relative_to(ROOT).as_posix()
        for folder in ("bundler", "kernel_src")
        for p in (ROOT / folder).rglob("*.py")
        if p.name != "__init__.py" and "__pycache__" not in p.parts
    }
    assert sorted(present - listed) == [], "modules missing from docs/ARCHITECTURE.md"
    assert sorted(listed - present) == [], "docs/ARCHITECTURE.md names modules that are gone"


def test_the_tests_row_names_every_stage_folder_and_helper() -> None:
    (row,) = re.findall(r"^\| `tests/` \|(.*)$", DOC, flags=re.M)
    listed = set(re.findall(r"`tests/(\w+)/`", row))
    tests = ROOT / "tests"
    folders = {p.parent.name for p in tests.glob("*/test_*.py")}
    assert sorted(folders ^ listed) == [], "test folders and docs/ARCHITECTURE.md's tests/ row differ"
    for folder in folders:
        assert (tests / folder / "conftest.py").is_file() and (tests / folder / "__init__.py").is_file(), folder
    helpers = {p.name for p in tests.glob("*.py")} - {"__init__.py"} - {p.name for p in tests.glob("test_*.py")}
    assert sorted(h for h in helpers if f"`{h}`" not in row) == [], "helpers missing from the tests/ row"


def test_no_test_module_imports_another() -> None:
    """Shared fixtures live in conftest.py files, shared helpers in the helper modules."""
    pattern = re.compile(r"^\s*(?:from|import) (tests\.(?:\w+\.)*test_\w+)", flags=re.M)
    importing = {p.relative_to(ROOT).as_posix(): pattern.findall(p.read_text()) for p in (ROOT / "tests").rglob("*.py")}
    assert {path: found for path, found in importing.items() if found} == {}
