"""docs/config.md is the page bundler.config_reference writes from the keys' declarations, and the
keys it documents are exactly the keys the parser accepts, table by table."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from bundler.config import (
    BundleConfig,
    CompetitionConfig,
    DatasetConfig,
    DryRunConfig,
    KernelConfig,
    MachineConfig,
    ModelEntry,
    TargetConfig,
    parse_config,
)
from bundler.config_reference import reference_markdown
from bundler.errors import ConfigError
from kernel_src.inputs import InputSpec
from kernel_src.layout import SubmissionSpec
from kernel_src.rows import RowSpec
from kernel_src.spec import GatingSpec, InferenceSpec, ModelSpec, PostprocessSpec
from kernel_src.tasks import TaskSpec

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")


def _documented() -> dict[str, list[str]]:
    """Each `## ` table of docs/config.md -> the keys its bullets name."""
    tables: dict[str, list[str]] = {}
    for block in DOC.split("\n## ")[1:]:
        title, _, body = block.partition("\n")
        tables[title.replace("`", "")] = re.findall(r"^- `(\w+)`", body, flags=re.M)
    return tables


def _names(cls: type, *, but: frozenset[str] = frozenset()) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)} - but


def test_the_committed_page_is_the_generated_one() -> None:
    assert reference_markdown() == DOC, (
        "docs/config.md differs from the declarations; run `python -m bundler.config_reference > docs/config.md`"
    )


def test_every_field_is_a_documented_key_or_named_here() -> None:
    """A field added without a help text fails here: it would be a key nobody documented."""
    documented = {k: set(v) for k, v in _documented().items()}
    models = "[[classifiers]] and [[segmenters]] and [[regressors]]"
    rows = "[submission] of a classification, regression or ordinal task"
    assert documented == {
        "[bundle]": {"name"},
        "[competition]": _names(CompetitionConfig),
        "[dataset]": _names(DatasetConfig),
        "[target]": _names(TargetConfig),
        "[kernel]": _names(KernelConfig),
        "[inference]": _names(
            InferenceSpec,
            but=frozenset(
                {"classifiers", "segmenters", "regressors", "gating", "postprocess", "submission", "task", "rows"}
                | {"input"}
            ),
        ),
        "[inference.gating]": _names(GatingSpec),
        "[inference.postprocess]": _names(PostprocessSpec),
        "[submission]": _names(SubmissionSpec) | {"rle_order"},
        "[input]": _names(InputSpec),
        "[task]": _names(TaskSpec),
        rows: _names(RowSpec),
        models: _names(ModelSpec, but=frozenset({"file", "sha256"}))
        | _names(ModelEntry, but=frozenset({"role", "spec"})),
        "[dryrun]": _names(DryRunConfig),
        "[machine]": _names(MachineConfig),
    }
    tables = {"competition", "dataset", "target", "kernel", "inference", "dryrun", "machine"}
    assert _names(BundleConfig) == {"name", "root", "source", "models", *tables}


def _demo() -> dict[str, Any]:
    return tomllib.loads((ROOT / "bundle.toml").read_text(encoding="utf-8"))


def _refused(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(raw, ROOT)
    return str(e.value)


def _listed(message: str) -> set[str]:
    """The key names an "unknown key" message offers."""
    return set(re.findall(r"\w+", message.split("known", 2)[-1].split(":", 1)[1]))


@pytest.mark.parametrize(
    ("title", "where"),
    [
        ("[bundle]", ("bundle",)),
        ("[competition]", ("competition",)),
        ("[dataset]", ("dataset",)),
        ("[target]", ("target",)),
        ("[kernel]", ("kernel",)),
        ("[inference]", ("inference",)),
        ("[inference.gating]", ("inference", "gating")),
        ("[inference.postprocess]", ("inference", "postprocess")),
        ("[submission]", ("submission",)),
        ("[input]", ("input",)),
        ("[[classifiers]] and [[segmenters]] and [[regressors]]", ("segmenters", 0)),
        ("[task]", ("task",)),
        ("[dryrun]", ("dryrun",)),
        ("[machine]", ("machine",)),
    ],
)
def test_an_unknown_key_offers_the_documented_keys(title: str, where: tuple[str | int, ...]) -> None:
    raw = _demo()
    table: Any = raw
    for step in where:
        table = table.setdefault(step, {}) if isinstance(step, str) else table[step]
    table["colour"] = "red"
    message = _refused(raw)
    assert "colour" in message
    documented = _documented()
    subtables = {t[len(title) : -1] for t in documented if t.startswith(title[:-1] + ".")}  # [inference.gating]
    assert _listed(message) == set(documented[title]) | subtables


def test_renamed_and_build_filled_keys_are_refused_with_what_to_do() -> None:
    raw = _demo()
    raw["inference"]["fp16"] = True
    assert "use precision" in _refused(raw)
    for built in ("file", "sha256"):
        raw = _demo()
        raw["segmenters"][0][built] = "x"
        assert f"segmenters[0].{built} is set by the build; give checkpoint instead" in _refused(raw)
