"""`bundler build` through click's runner, with a real bundle.toml and real tiny checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result

from bundler.cli import main
from tests.projects import write_bundle
from tests.tiny import make_torchscript_segmenter


def test_build_then_noop_through_the_cli(tmp_path: Path) -> None:
    config = write_bundle(tmp_path)
    runner = CliRunner()
    first = runner.invoke(main, ["build", "--config", str(config)])
    assert first.exit_code == 0, first.output
    out = tmp_path / "out" / "dataset"
    assert (out / "bundle.json").is_file()
    assert "seg-tiny.safetensors" in first.stdout and "cls-tiny.safetensors" in first.stdout
    assert "total" in first.stdout
    assert f"kaggle datasets create -p {out}" in first.stdout
    assert f"kaggle datasets version -p {out} -m" in first.stdout

    second = runner.invoke(main, ["build", "--config", str(config)])
    assert second.exit_code == 0, second.output
    assert "is up to date" in second.stdout

    before = (out / "bundle.json").stat().st_mtime_ns
    forced = runner.invoke(main, ["build", "--config", str(config), "--force"])
    assert forced.exit_code == 0, forced.output
    assert "is up to date" not in forced.stdout
    assert (out / "bundle.json").stat().st_mtime_ns != before  # rebuilt and swapped in
    assert (out / "seg-tiny.safetensors").is_file()


def test_out_flag_overrides_the_config(tmp_path: Path) -> None:
    config = write_bundle(tmp_path)
    result = CliRunner().invoke(main, ["build", "--config", str(config), "--out", str(tmp_path / "elsewhere")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "elsewhere" / "bundle.json").read_text())["bundle"] == "tiny-bundle"
    assert not (tmp_path / "out" / "dataset").exists()


def test_bad_config_exits_2_with_one_message(tmp_path: Path) -> None:
    config = write_bundle(tmp_path)
    config.write_text(config.read_text().replace('title = "tiny bundle for tests"', 'title = "tiny"'))
    result = CliRunner().invoke(main, ["build", "--config", str(config)])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {config}: dataset.title")
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint_exits_1_naming_the_key(tmp_path: Path) -> None:
    config = write_bundle(tmp_path, seg_checkpoint="models/missing.pth")
    result = CliRunner().invoke(main, ["build", "--config", str(config)])
    assert result.exit_code == 1
    assert "segmenters[0].checkpoint" in result.stderr and "Traceback" not in result.output


def test_messages_print_square_brackets_as_written_and_name_the_config_read(tmp_path: Path) -> None:
    config = write_bundle(tmp_path)
    other = tmp_path / "other.toml"
    other.write_text(config.read_text() + "\n[extra]\nx = 1\n")
    result = CliRunner().invoke(main, ["build", "--config", str(other)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {other}: unknown section [extra]; known: bundle, classifiers, ")

    other.write_text(config.read_text().replace("[[segmenters]]", "[segmenters]", 1))
    result = CliRunner().invoke(main, ["build", "--config", str(other)])
    assert result.exit_code == 2, result.output
    assert "segmenters must be an array of tables ([[segmenters]])" in result.stderr

    config = write_bundle(tmp_path, seg_checkpoint="models/[bold]unet.pth")
    result = CliRunner().invoke(main, ["build", "--config", str(config)])
    assert result.exit_code == 1, result.output
    assert "models/[bold]unet.pth" in result.stderr and "Traceback" not in result.output


def _one_error_line(result: Result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_a_checkpoint_that_is_not_one_is_refused_in_one_line(tmp_path: Path) -> None:
    passwd = tmp_path / "models" / "passwd"
    passwd.parent.mkdir(parents=True)
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")
    (tmp_path / "models" / "link.pth").symlink_to(passwd)
    for checkpoint in ("models/passwd", "models/link.pth"):
        result = CliRunner().invoke(main, ["build", "--config", str(write_bundle(tmp_path, seg_checkpoint=checkpoint))])
        assert result.exit_code == 1
        line = _one_error_line(result)
        assert "is not a checkpoint torch can read" in line and "accepted: a state dict" in line, line
    assert not (tmp_path / "out" / "dataset").exists()


def test_a_checkpoint_folder_is_named_a_folder_not_missing(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "run1"
    folder.mkdir(parents=True)
    (folder / "best.pth").write_bytes(b"x")
    result = CliRunner().invoke(main, ["build", "--config", str(write_bundle(tmp_path, seg_checkpoint="models/run1"))])
    assert result.exit_code == 1
    line = _one_error_line(result)
    assert "is a folder, not a checkpoint file (it holds best.pth)" in line and "does not exist" not in line


def test_out_under_a_file_is_refused_naming_out(tmp_path: Path) -> None:
    config = write_bundle(tmp_path)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    result = CliRunner().invoke(main, ["build", "--config", str(config), "--out", str(a_file / "x")])
    assert result.exit_code == 1
    line = _one_error_line(result)
    assert "--out" in line and f"{a_file} is a file, so no folder can be made under it" in line
    assert a_file.read_text() == "x"


def test_a_torchscript_checkpoint_carrying_a_kaggle_key_is_refused(tmp_path: Path) -> None:
    key = "0123456789abcdef0123456789abcdef"
    make_torchscript_segmenter(tmp_path / "models", attributes={"cfg": {"username": "someone", "key": key}})
    config = write_bundle(tmp_path, seg_checkpoint="models/ts-seg.pt")
    smp = 'kind = "smp"\narch = "Linknet"\nencoder = "tu-test_efficientnet"'
    assert smp in config.read_text()
    config.write_text(config.read_text().replace(smp, 'kind = "torchscript"\ninput_size = [32, 128]'))
    result = CliRunner().invoke(main, ["build", "--config", str(config)])
    assert result.exit_code == 1
    line = _one_error_line(result)
    assert "segmenters[0].checkpoint" in line and "Kaggle API key" in line and "at cfg.key inside" in line, line
    assert key not in result.output
    assert not (tmp_path / "out" / "dataset").exists()


def test_a_size_the_architecture_cannot_take_fails_the_build_naming_model_and_size(tmp_path: Path) -> None:
    config = write_bundle(tmp_path)
    seg = 'encoder = "tu-test_efficientnet"\n'
    config.write_text(config.read_text().replace(seg, seg + "input_size = [64, 400]\n"))
    result = CliRunner().invoke(main, ["build", "--config", str(config)])
    assert result.exit_code == 1
    line = _one_error_line(result)
    assert "model 'seg-tiny' (Linknet/tu-test_efficientnet) cannot take one 64x400 image" in line, line
    assert "divisible by 32" in line and "segmenters[0].input_size" in line
    assert not (tmp_path / "out" / "dataset").exists()


def test_build_errors_name_the_config_file_read(tmp_path: Path) -> None:
    config = write_bundle(tmp_path, seg_checkpoint="models/gone.pth")
    other = config.rename(tmp_path / "other.toml")
    result = CliRunner().invoke(main, ["build", "--config", str(other)])
    assert result.exit_code == 1
    line = _one_error_line(result)
    assert f"fix {other} segmenters[0].checkpoint" in line and "bundle.toml" not in line, line
