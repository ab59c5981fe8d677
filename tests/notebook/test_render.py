"""`bundler render-notebook`: deterministic, valid notebooks that carry kernel_src byte for byte."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import nbformat
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from IPython.core.inputtransformer2 import TransformerManager

from bundler.cli import main as cli
from bundler.errors import RenderError
from bundler.notebook.parameters import (
    INJECTED_TAG,
    config_source,
    literal,
    notebook_config,
    notebook_parameters,
    parse_assignment,
    with_parameters,
)
from bundler.notebook.render import (
    build_notebook,
    kernel_src_dir,
    kernel_src_files,
    notebook_bytes,
    render_notebook,
)
from kernel_src.bundle import kernel_src_hash
from tests.projects import FAKE_BUNDLE_HASH, demo_cfg, quiet, write_fake_manifest


def test_render_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    cfg = demo_cfg(tmp_path)
    render_notebook(cfg, console=quiet())
    first = cfg.kernel.notebook.read_bytes()
    first_meta = cfg.kernel.metadata.read_bytes()
    cfg.kernel.notebook.unlink()
    render_notebook(cfg, console=quiet())
    assert cfg.kernel.notebook.read_bytes() == first
    assert cfg.kernel.metadata.read_bytes() == first_meta
    manifest = json.loads((cfg.dataset.out / "bundle.json").read_text())
    assert notebook_bytes(build_notebook(cfg, manifest)) == first


def test_notebook_is_valid_with_kernelspec_and_language_info(tmp_path: Path) -> None:
    cfg = demo_cfg(tmp_path)
    render_notebook(cfg, console=quiet())
    nb = nbformat.read(cfg.kernel.notebook, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    assert nb.metadata.kernelspec.language == "python"
    assert nb.metadata.language_info.name == "python"
    assert nb.metadata.language_info.version == "3.12"
    ids = [c.id for c in nb.cells]
    assert len(set(ids)) == len(ids)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    raw = cfg.kernel.notebook.read_text()
    assert json.dumps(json.loads(raw), sort_keys=True, indent=1, ensure_ascii=False) + "\n" == raw


def test_cell_order_start_time_first_then_parameters(tmp_path: Path) -> None:
    cfg = demo_cfg(tmp_path)
    nb = build_notebook(cfg, json.loads((cfg.dataset.out / "bundle.json").read_text()))
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "NOTEBOOK_STARTED_AT = time.time()" in code[0].source
    assert code[1].metadata.tags == ["parameters"]
    assert code[1].source.startswith("CONFIG = {")
    assert "setup(CONFIG)" in code[-2].source
    assert "main(CONFIG, started_at=NOTEBOOK_STARTED_AT" in code[-1].source


def test_header_names_bundle_and_kernel_src_hashes(tmp_path: Path) -> None:
    cfg = demo_cfg(tmp_path)
    render_notebook(cfg, console=quiet())
    nb = nbformat.read(cfg.kernel.notebook, as_version=4)
    header = nb.cells[0]
    assert header.cell_type == "markdown"
    src_hash = kernel_src_hash(kernel_src_dir())
    assert FAKE_BUNDLE_HASH in header.source
    assert src_hash in header.source
    assert "severstal-demo" in header.source
    assert "bundler render-notebook" in header.source
    assert nb.metadata.bundler.kernel_src_hash == src_hash
    assert f'KERNEL_SRC_HASH = "{src_hash}"' in "".join(c.source for c in nb.cells)


def _writefile_cells(nb: Any) -> dict[str, str]:
    """{relative module path: the body IPython's %%writefile receives}."""
    out: dict[str, str] = {}
    manager = TransformerManager()
    for cell in nb.cells:
        if cell.source.startswith("%%writefile"):
            python = manager.transform_cell(cell.source)
            assert python.startswith("get_ipython().run_cell_magic('writefile', ")
            _, line, body = eval(python.removeprefix("get_ipython().run_cell_magic"))
            assert line.startswith('"{KERNEL_SRC_DIR}/') and line.endswith('"'), line  # quoted: paths may hold spaces
            out[line[1:-1].removeprefix("{KERNEL_SRC_DIR}/")] = body
    return out


def test_every_kernel_src_module_is_carried_byte_for_byte(tmp_path: Path) -> None:
    cfg = demo_cfg(tmp_path)
    nb = build_notebook(cfg, json.loads((cfg.dataset.out / "bundle.json").read_text()))
    carried = _writefile_cells(nb)
    src = kernel_src_dir()
    expected = {p.relative_to(src).as_posix(): p.read_text(encoding="utf-8") for p in kernel_src_files(src)}
    assert set(carried) == set(expected)
    assert {"__init__.py", "bundle.py", "notebook.py", "spec.py", "models.py"} <= set(carried)
    for name, body in carried.items():
        assert body == expected[name], name


def test_kernel_src_edit_changes_the_hash(tmp_path: Path) -> None:
    cfg = demo_cfg(tmp_path / "project")
    manifest = json.loads((cfg.dataset.out / "bundle.json").read_text())
    copy = tmp_path / "kernel_src"
    shutil.copytree(kernel_src_dir(), copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = build_notebook(cfg, manifest, copy)
    with (copy / "spec.py").open("a", encoding="utf-8") as f:
        f.write("# a local edit\n")
    after = build_notebook(cfg, manifest, copy)
    assert before.metadata.bundler.kernel_src_hash != after.metadata.bundler.kernel_src_hash
    assert after.metadata.bundler.kernel_src_hash in after.cells[0].source
    assert _writefile_cells(after)["spec.py"].endswith("# a local edit\n")
    (copy / "extra").mkdir()
    (copy / "extra" / "__init__.py").write_text("X = 1\n")
    nested = build_notebook(cfg, manifest, copy)
    assert _writefile_cells(nested)["extra/__init__.py"] == "X = 1\n"
    assert '(KERNEL_SRC_DIR / "extra").mkdir(parents=True)' in "".join(c.source for c in nested.cells)


def test_a_module_without_final_newline_is_refused(tmp_path: Path) -> None:
    cfg = demo_cfg(tmp_path / "project")
    copy = tmp_path / "kernel_src"
    shutil.copytree(kernel_src_dir(), copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "rle.py").write_text((copy / "rle.py").read_text().rstrip("\n"))
    with pytest.raises(RenderError, match=r"rle\.py: add a newline"):
        build_notebook(cfg, json.loads((cfg.dataset.out / "bundle.json").read_text()), copy)


def test_render_requires_the_built_bundle(tmp_path: Path) -> None:
    cfg = demo_cfg(tmp_path, manifest=False)
    with pytest.raises(RenderError, match=r"bundle\.json not found: the bundle was never built; run `bundler build`"):
        render_notebook(cfg, console=quiet())
    assert not cfg.kernel.notebook.exists()


def test_render_refuses_a_manifest_without_a_models_weights(tmp_path: Path) -> None:
    cfg = demo_cfg(tmp_path, manifest=False)
    data = write_fake_manifest(cfg)
    write_fake_manifest(cfg, weights=data["weights"][:-1])
    with pytest.raises(RenderError, match=r"no weight file fpn-mobilenet\.safetensors for model 'fpn-mobilenet'"):
        render_notebook(cfg, console=quiet())
    write_fake_manifest(cfg, bundle="another")
    with pytest.raises(RenderError, match=r"bundle 'another', but bundle\.toml names 'severstal-demo'"):
        render_notebook(cfg, console=quiet())


def test_config_carries_the_spec_with_manifest_hashes(tmp_path: Path) -> None:
    cfg = demo_cfg(tmp_path)
    manifest = json.loads((cfg.dataset.out / "bundle.json").read_text())
    config = notebook_config(cfg, manifest)
    assert config["bundle_hash"] == FAKE_BUNDLE_HASH
    assert config["bundle_name"] == "severstal-demo"
    assert [m["sha256"] for m in config["inference"]["segmenters"]] == [f"{1:064x}", f"{2:064x}"]
    nb = build_notebook(cfg, manifest)
    assert notebook_parameters(nb) == config


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), values, max_size=5))
def test_config_literal_round_trips(config: dict[str, Any]) -> None:
    assert parse_assignment(f"CONFIG = {literal(config)}\n", "CONFIG") == config


def test_literal_refuses_what_python_cannot_read_back() -> None:
    with pytest.raises(RenderError, match="finite"):
        literal({"x": float("nan")})
    with pytest.raises(RenderError, match="set"):
        literal({"x": {1, 2}})


def test_with_parameters_injects_after_the_parameters_cell(tmp_path: Path) -> None:
    cfg = demo_cfg(tmp_path)
    nb = build_notebook(cfg, json.loads((cfg.dataset.out / "bundle.json").read_text()))
    before = notebook_bytes(nb)
    out = with_parameters(nb, {"bundle_dir": tmp_path / "b", "inference": {"device": "cpu", "batch_size": 1}})
    assert notebook_bytes(nb) == before  # the input is not changed
    nbformat.validate(out)
    index = next(i for i, c in enumerate(out.cells) if "parameters" in c.metadata.get("tags", []))
    injected = out.cells[index + 1]
    assert injected.metadata.tags == [INJECTED_TAG]
    assert injected.id == INJECTED_TAG
    merged = parse_assignment(injected.source, "CONFIG")
    assert merged["bundle_dir"] == str(tmp_path / "b")
    assert merged["inference"]["device"] == "cpu"
    assert merged["inference"]["batch_size"] == 1
    assert merged["inference"]["segmenters"] == notebook_parameters(nb)["inference"]["segmenters"]
    again = with_parameters(out, {"working_dir": "/w"})
    assert sum(INJECTED_TAG in c.metadata.get("tags", []) for c in again.cells) == 1
    assert parse_assignment(again.cells[index + 1].source, "CONFIG")["working_dir"] == "/w"
    assert parse_assignment(again.cells[index + 1].source, "CONFIG")["bundle_dir"] is None
    with pytest.raises(RenderError, match="no setting 'bundle_dri'"):
        with_parameters(nb, {"bundle_dri": "/x"})


def test_config_source_comments_do_not_change_the_value(tmp_path: Path) -> None:
    cfg = demo_cfg(tmp_path)
    config = notebook_config(cfg, json.loads((cfg.dataset.out / "bundle.json").read_text()))
    commented = config_source(config, comments=True)
    assert "# where Kaggle mounts the inputs" in commented
    assert parse_assignment(commented, "CONFIG") == parse_assignment(config_source(config, comments=False), "CONFIG")


def test_cli_renders_and_prints_the_push_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = demo_cfg(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["render-notebook", "--config", str(tmp_path / "bundle.toml")])
    assert result.exit_code == 0, result.output
    assert "kaggle kernels push -p ." in result.output
    assert "build/inference.ipynb" in result.output
    assert cfg.kernel.notebook.is_file()
    assert json.loads(cfg.kernel.metadata.read_text())["code_file"] == "build/inference.ipynb"


def test_cli_reports_a_missing_build_without_traceback(tmp_path: Path) -> None:
    demo_cfg(tmp_path, manifest=False)
    result = CliRunner().invoke(cli, ["render-notebook", "--config", str(tmp_path / "bundle.toml")])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
