from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from bundler.config import load_config, parse_config
from bundler.errors import ConfigError
from kernel_src.errors import SpecError
from kernel_src.spec import InferenceSpec

ROOT = Path(__file__).resolve().parent.parent


def raw_demo() -> dict[str, Any]:
    return tomllib.loads((ROOT / "bundle.toml").read_text())


def test_demo_config_loads_and_round_trips_through_json() -> None:
    cfg = load_config(ROOT / "bundle.toml")
    assert cfg.inference.num_classes == 4
    assert [m.spec.name for m in cfg.models] == ["cls-resnet18", "unet-resnet18", "fpn-mobilenet"]
    assert cfg.inference.time_budget_s == cfg.competition.time_limit_s - 300
    assert InferenceSpec.from_dict(cfg.inference.to_dict()) == cfg.inference
    assert cfg.models[1].checkpoint == ROOT / "models/unet-resnet18.pth"
    assert cfg.models[1].spec.file == "unet-resnet18.safetensors"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda r: r["inference"]["postprocess"].update(threshold=[0.5, 1.5, 0.5, 0.5]),
            "inference.postprocess.threshold",
        ),
        (lambda r: r["segmenters"][0].update(tta=["identity", "rot90"]), "segmenters[0].tta"),
        (lambda r: r["segmenters"][0].pop("checkpoint"), "segmenters[0].checkpoint"),
        (lambda r: r["segmenters"][0].pop("encoder"), "segmenters[0].encoder"),
        (lambda r: r["inference"]["gating"].update(mode="sometimes"), "inference.gating.mode"),
        (lambda r: r["inference"].update(rle_order="K"), "inference.rle_order"),
        (lambda r: r["dataset"].update(id="no-slash"), "dataset.id"),
        (lambda r: r["dataset"].update(title="short"), "dataset.title"),
        (lambda r: r["kernel"].update(title="abc"), "kernel.title"),
        (lambda r: r.update(extra={}), "[extra]"),
        (lambda r: r["inference"].update(colour="red"), "inference.colour"),
        (lambda r: r.pop("classifiers"), "inference.gating.mode"),
        (lambda r: r["segmenters"][1].update(name="unet-resnet18"), "used twice"),
        (lambda r: r["inference"].update(memory_format="nhwc"), "inference.memory_format: 'nhwc' must be one of"),
        (lambda r: r["inference"].update(precision="int8"), "inference.precision: 'int8' must be one of"),
        (lambda r: r["inference"].update(images_per_call=-1), "inference.images_per_call"),
        (lambda r: r["inference"].update(fp16=True), "inference.fp16: is no longer a setting; use precision"),
        (lambda r: r["inference"].update(cpu_micro_batch=2), "inference.cpu_micro_batch: .* use images_per_call"),
    ],
)
def test_every_bad_value_names_its_key(edit: Any, expected: str) -> None:
    raw = raw_demo()
    edit(raw)
    with pytest.raises(ConfigError, match=r"bundle\.toml: .*" + expected.replace("[", r"\[").replace("]", r"\]")):
        parse_config(raw, ROOT)


def test_inference_device_settings_are_read() -> None:
    raw = raw_demo()
    raw["inference"].update(memory_format="channels_last", precision="bf16", images_per_call=3)
    spec = parse_config(raw, ROOT).inference
    assert (spec.memory_format, spec.precision, spec.images_per_call) == ("channels_last", "bf16", 3)
    assert InferenceSpec.from_dict(spec.to_dict()) == spec
    default = parse_config(raw_demo(), ROOT).inference
    assert (default.memory_format, default.precision, default.images_per_call) == ("auto", "auto", 0)


def test_missing_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--config"):
        load_config(tmp_path / "bundle.toml")


def test_baseline_path_is_resolved_against_the_config_folder_but_a_name_stays_a_name(tmp_path: Path) -> None:
    raw = raw_demo()
    raw["target"]["baseline"] = "kaggle-baseline.txt"
    assert parse_config(raw, tmp_path).target.baseline == str(tmp_path / "kaggle-baseline.txt")
    raw["target"]["baseline"] = "kaggle-2026-08-12"
    assert parse_config(raw, tmp_path).target.baseline == "kaggle-2026-08-12"


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("competition", "hidden_test_images", "5506", "hidden_test_images = '5506' must be an integer"),
        ("competition", "hidden_test_images", 5506.0, "hidden_test_images = 5506.0 must be an integer (found a float)"),
        ("competition", "hidden_test_images", True, "hidden_test_images = true must be an integer (found a boolean)"),
        ("competition", "time_limit_s", "3600", "time_limit_s = '3600' must be a number (found a string)"),
        ("kernel", "enable_gpu", "false", "enable_gpu = 'false' must be true or false (found a string)"),
        ("target", "requirements", "pkg==1.0", "requirements = 'pkg==1.0' must be an array of strings"),
        ("target", "platforms", ["linux_x86_64", 3], "platforms = ['linux_x86_64', 3] must be an array of strings"),
        ("dryrun", "calibration", "fast", "calibration = 'fast' must be a number (found a string)"),
        ("dryrun", "labels", 7, "labels = 7 must be a string (found an integer)"),
        ("dataset", "out", ["a"], "out = ['a'] must be a string (found an array)"),
        ("dataset", "id", 12, "id = 12 must be a string (found an integer)"),
    ],
)
def test_a_value_of_the_wrong_type_names_key_type_wanted_and_found(
    section: str, key: str, value: Any, expected: str
) -> None:
    raw = raw_demo()
    raw.setdefault(section, {})[key] = value
    with pytest.raises(ConfigError, match=rf"^bundle\.toml: {section}\." + re.escape(expected)):
        parse_config(raw, ROOT)


def test_numbers_take_integers_and_a_model_entry_must_be_a_table() -> None:
    raw = raw_demo()
    raw["competition"]["time_limit_s"] = 3600
    assert parse_config(raw, ROOT).competition.time_limit_s == 3600.0
    raw["segmenters"][0] = "unet"
    with pytest.raises(ConfigError, match=r"^bundle\.toml: segmenters\[0\] must be a table"):
        parse_config(raw, ROOT)
    raw = raw_demo()
    raw["segmenters"][0]["fp16"] = "yes"
    with pytest.raises(ConfigError, match=r"segmenters\[0\]\.fp16 = 'yes' must be true or false"):
        parse_config(raw, ROOT)


def test_errors_name_the_file_actually_read(tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text((ROOT / "bundle.toml").read_text().replace("[dryrun]", '[dryrun]\ncalibration = "fast"', 1))
    with pytest.raises(ConfigError, match=r"other\.toml: dryrun\.calibration") as e:
        load_config(other)
    assert "bundle.toml" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^custom\.toml: unknown section \[extra\]"):
        parse_config({**raw_demo(), "extra": {}}, ROOT, "custom.toml")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda r: r["inference"].update(batch_size="four"), "inference.batch_size: 'four' must be an integer"),
        (lambda r: r["inference"].update(num_classes=4.7), "inference.num_classes: 4.7 must be an integer (found"),
        (lambda r: r["inference"].update(precision=16), "inference.precision: 16 must be a string (found an integer)"),
        (lambda r: r["inference"]["postprocess"].update(threshold="0.5"), "inference.postprocess.threshold: '0.5'"),
        (lambda r: r["inference"]["postprocess"].update(min_area=2.5), "inference.postprocess.min_area: 2.5 must"),
        (lambda r: r["inference"].update(gating="on"), "inference.gating: 'on' must be a table (found a string)"),
        (lambda r: r["segmenters"][0].update(tta="hflip"), "segmenters[0].tta: 'hflip' must be an array"),
        (lambda r: r["segmenters"][0].update(input_size=["64", 400]), "segmenters[0].input_size: expected [height"),
        (lambda r: r["segmenters"][0].update(weight="2"), "segmenters[0].weight: '2' must be a number"),
    ],
)
def test_inference_settings_of_the_wrong_type_name_their_key(edit: Any, expected: str) -> None:
    raw = raw_demo()
    edit(raw)
    with pytest.raises(ConfigError, match="^bundle\\.toml: " + re.escape(expected)):
        parse_config(raw, ROOT)


def test_the_notebook_side_refuses_a_threshold_given_as_text() -> None:
    data = load_config(ROOT / "bundle.toml").inference.to_dict()
    data["postprocess"]["threshold"] = "0.5"
    with pytest.raises(SpecError, match=r"postprocess\.threshold: '0\.5' must be a number or an array of 4 numbers"):
        InferenceSpec.from_dict(data)


def test_a_config_that_is_a_folder_or_binary_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"is a folder; pass --config PATH"):
        load_config(tmp_path)
    (tmp_path / "model.pth").write_bytes(b"\x80\x02\xff\xfe binary")
    with pytest.raises(ConfigError, match=r"model\.pth: not UTF-8 text"):
        load_config(tmp_path / "model.pth")


def _digits(**changes: Any) -> dict[str, Any]:
    """The demo config turned into a Digit Recognizer classification."""
    raw = raw_demo()
    classifier = {"name": "cnn", "kind": "torchscript", "checkpoint": "cnn.pt", "tta": ["identity"]}
    raw.pop("segmenters", None)
    raw["classifiers"] = [classifier]
    raw["inference"] = {**raw.get("inference", {}), "num_classes": 10, "image_height": 28, "image_width": 28}
    for segmentation_only in ("gating", "postprocess"):
        raw["inference"].pop(segmentation_only, None)
    raw["task"] = {"name": "classification"}
    raw["submission"] = {"preset": "digit-recognizer"}
    raw.update(changes)
    return raw


def test_a_classification_task_reads_submission_as_per_image_rows() -> None:
    cfg = parse_config(_digits(), ROOT)
    assert cfg.inference.task.name == "classification" and cfg.inference.rows.preset == "digit-recognizer"
    assert cfg.inference.outputs("classifier") == 10 and [m.role for m in cfg.models] == ["classifier"]
    assert InferenceSpec.from_dict(cfg.inference.to_dict()) == cfg.inference  # what the notebook gets back
    with pytest.raises(ConfigError, match=r"^bundle.toml: unknown key submission.layout; known keys: .*preset"):
        parse_config(_digits(submission={"layout": "auto"}), ROOT)
    with pytest.raises(ConfigError, match=r"^bundle.toml: submission.top_k: must be in 1..10"):
        parse_config(_digits(submission={"form": "top_k", "top_k": 11}), ROOT)
    with pytest.raises(ConfigError, match=r"^bundle.toml: task.values: does not apply to task 'classification'"):
        parse_config(_digits(task={"name": "classification", "values": 2}), ROOT)
    regression = _digits(task={"name": "regression", "scale": 10.0}, submission={"value_columns": ["distance"]})
    regression["regressors"] = regression.pop("classifiers")
    cfg = parse_config(regression, ROOT)
    assert cfg.inference.task.scale == (10.0,) and cfg.inference.rows.form == "values"
    assert [m.role for m in cfg.models] == ["regressor"] and cfg.inference.outputs("regressor") == 1


@pytest.mark.parametrize("block", re.findall(r"```toml\n(.*?)```", (ROOT / "docs" / "tasks.md").read_text(), re.S))
def test_every_task_example_of_the_docs_is_a_valid_config(block: str) -> None:
    raw = raw_demo()
    for table in ("classifiers", "segmenters", "submission", "task"):
        raw.pop(table, None)
    example = tomllib.loads(block)
    raw["inference"] = {k: v for k, v in raw["inference"].items() if k not in ("gating", "postprocess", "num_classes")}
    raw["inference"] |= example.pop("inference")
    cfg = parse_config(raw | example, ROOT)
    assert cfg.inference.task.name == example["task"]["name"]
    assert cfg.inference.models and all(m.role == cfg.inference.task.task.role for m in cfg.models)
