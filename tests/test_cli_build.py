"""`bundler build` through click's runner, with a real bundle.toml and real tiny checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from bundler.cli import main
from tests.projects import write_bundle


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
