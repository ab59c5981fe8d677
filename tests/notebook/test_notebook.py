"""kernel_src.notebook (the notebook's setup and run cells), and the rendered notebook executed end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import nbformat
import pytest

from kernel_src.bundle import CompetitionData, Prepared, sha256_file
from kernel_src.errors import BundleError
from kernel_src.notebook import CONFIG_KEYS, check_config, setup
from kernel_src.spec import InferenceSpec
from tests.projects import model_table, quiet, tiny_project, write_project

SPEC = InferenceSpec.from_dict(
    {
        "num_classes": 4,
        "classifiers": [{"name": "cls", "kind": "timm", "arch": "resnet18", "file": "cls.safetensors"}],
        "segmenters": [
            {"name": "unet", "kind": "smp", "arch": "Unet", "encoder": "resnet18", "file": "unet.safetensors"},
            {"name": "fpn", "kind": "torchscript", "file": "fpn.pt"},
        ],
    }
)


def config_for(spec: InferenceSpec, **changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = dict.fromkeys(CONFIG_KEYS)
    config.update(bundle_name="tiny", inference=spec.to_dict(), install_wheels="auto")
    config.update(changes)
    return config


def test_check_config_names_the_bad_setting() -> None:
    spec = SPEC
    assert check_config(config_for(spec)) == spec
    with pytest.raises(BundleError, match=r"CONFIG\['bundle_dri'\] is not a setting"):
        check_config({**config_for(spec), "bundle_dri": "/x"})
    with pytest.raises(BundleError, match=r"CONFIG\['inference'\] is required"):
        check_config(config_for(spec, inference=None))
    bad = spec.to_dict()
    bad["postprocess"]["threshold"] = [0.5, 2.0, 0.5, 0.5]
    with pytest.raises(BundleError, match=r"CONFIG\['inference'\] postprocess\.threshold: 2\.0 is outside"):
        check_config(config_for(spec, inference=bad))


def test_setup_refuses_a_model_the_manifest_does_not_list(tmp_path: Path) -> None:
    spec = SPEC
    (tmp_path / "bundle").mkdir()
    for name in ("cls.safetensors", "unet.safetensors", "fpn.pt"):
        (tmp_path / "bundle" / name).write_bytes(b"weights of " + name.encode())
    weights = [
        {
            "file": m.file,
            "sha256": sha256_file(tmp_path / "bundle" / m.file),
            "size": (tmp_path / "bundle" / m.file).stat().st_size,
        }
        for m in (*spec.classifiers, *spec.segmenters)
    ]
    manifest = {"format": 1, "bundle": "tiny", "hash": "ab" * 32, "wheels": [], "weights": weights[:-1]}
    (tmp_path / "bundle" / "bundle.json").write_text(json.dumps(manifest))
    comp = tmp_path / "input" / "comp"
    (comp / "test_images").mkdir(parents=True)
    (comp / "sample_submission.csv").write_text("ImageId_ClassId,EncodedPixels\n")
    config = config_for(spec, bundle_dir=str(tmp_path / "bundle"), input_root=str(tmp_path / "input"))
    with pytest.raises(BundleError, match=r"weight file fpn\.pt that the notebook's models need is not in"):
        setup(config)
    manifest["weights"] = weights
    (tmp_path / "bundle" / "bundle.json").write_text(json.dumps(manifest))
    prepared = setup(config)
    assert prepared == Prepared(
        tmp_path / "bundle",
        manifest,
        CompetitionData(comp, comp / "sample_submission.csv", comp / "test_images"),
        (),
    )


# --- end to end: build a tiny bundle, render, execute the notebook in a Kaggle-like tree ---


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny project built and rendered once: real tiny models (a timm classifier gating an smp Unet
    with flip TTA), no wheels, synthetic test images."""
    from bundler.config import load_config
    from bundler.dataset.dataset_folder import build_dataset
    from bundler.demo.synthetic import make_dataset
    from bundler.notebook.render import render_notebook
    from tests.tiny import make_tiny_models

    root = tmp_path_factory.mktemp("project")
    classifiers, segmenters = make_tiny_models(root / "models")
    classifiers, segmenters = classifiers[1:], segmenters[:1]  # one of each keeps the kernel quick on 2 cores
    toml = tiny_project(
        classifiers=[model_table(m, root / "models" / m.file) for m in classifiers],
        segmenters=[model_table(m, root / "models" / m.file) for m in segmenters],
    )
    cfg = load_config(write_project(root, toml))
    build_dataset(cfg, console=quiet())
    result = render_notebook(cfg, console=quiet())
    data = make_dataset(root / "data", 6, height=64, width=256, seed=3)
    return {"cfg": cfg, "render": result, "data": data, "root": root}


def _execute(project: dict[str, Any], bundle_src: Path, where: Path) -> tuple[Any, Any, Path]:
    from bundler.dryrun.execution import run_notebook
    from bundler.dryrun.tree import make_tree
    from bundler.notebook.parameters import with_parameters
    from bundler.sandbox import probe

    cfg, data = project["cfg"], project["data"]
    tree = make_tree(
        where / "kaggle",
        bundle_src=bundle_src,
        dataset_id=cfg.dataset.id,
        competition_slug="competitions/tiny-comp",  # the newer mount layout
        test_dir=data.images_dir,
        test_images_name="test_images",
        sample_submission_src=data.sample_submission,
        sample_submission_name="sample_submission.csv",
    )
    nb = nbformat.read(cfg.kernel.notebook, as_version=4)
    injected = with_parameters(nb, {"input_root": tree.input_root, "working_dir": tree.working})
    path = where / "injected.ipynb"
    nbformat.write(injected, path)
    executed = where / "executed.ipynb"
    ex = run_notebook(
        path, executed, cwd=tree.working, console=quiet(), isolation=probe(), readonly=[tree.input_root], timeout_s=300
    )
    return ex, tree, executed


@pytest.mark.slow
def test_notebook_submission_is_byte_identical_to_kernel_src(project: dict[str, Any], tmp_path: Path) -> None:
    from bundler.dryrun.tree import remove_tree
    from bundler.notebook.parameters import notebook_parameters
    from kernel_src.run import run

    cfg, data = project["cfg"], project["data"]
    ex, tree, executed = _execute(project, cfg.dataset.out, tmp_path)
    try:
        assert ex.ok, f"{ex.status}: {ex.failure}\n{ex.log.read_text()[-3000:]}"
        config = notebook_parameters(nbformat.read(cfg.kernel.notebook, as_version=4))
        spec = InferenceSpec.from_dict(config["inference"])
        direct = run(
            spec,
            bundle_dir=cfg.dataset.out,
            test_dir=data.images_dir,
            sample_submission=data.sample_submission,
            out_dir=tmp_path / "direct",
            progress=False,
        )
        notebook_csv = (tree.working / "submission.csv").read_bytes()
        assert notebook_csv == direct.submission_path.read_bytes()
        assert len(notebook_csv.decode().strip().splitlines()) == 1 + 4 * len(data.image_ids)
        profile = json.loads((tree.working / "profile.json").read_text())
        assert profile["images"] == len(data.image_ids)
        done = nbformat.read(executed, as_version=4)
        setup_out = "".join(o.get("text", "") for c in done.cells if c.id == "setup" for o in c.outputs)
        assert f"{tree.bundle_dir} verified" in setup_out
        assert str(tree.test_images) in setup_out
    finally:
        remove_tree(tree.root)


@pytest.mark.slow
def test_missing_wheel_and_weight_stop_the_notebook_in_setup(project: dict[str, Any], tmp_path: Path) -> None:
    from bundler.dryrun.tree import remove_tree
    from bundler.notebook.failure import own_cells

    cfg = project["cfg"]
    broken = tmp_path / "broken"
    shutil.copytree(cfg.dataset.out, broken)
    manifest = json.loads((broken / "bundle.json").read_text())
    manifest["wheels"].append(
        {"file": "tinydep-1.0-py3-none-any.whl", "name": "tinydep", "version": "1.0", "sha256": "0" * 64, "size": 1}
    )
    (broken / "bundle.json").write_text(json.dumps(manifest))
    (broken / "unet-mnv3.safetensors").unlink()
    ex, tree, executed = _execute(project, broken, tmp_path)
    try:
        assert ex.status == "cell_failed" and ex.failure is not None, ex
        failure = ex.failure
        done = nbformat.read(executed, as_version=4)
        assert failure.cell == "setup" and own_cells(done)[failure.index or 0].id == "setup"
        assert failure.ename == "BundleError"
        assert "wheel tinydep-1.0-py3-none-any.whl is missing" in failure.evalue
        assert "weight file unet-mnv3.safetensors is missing" in failure.evalue
        assert "kaggle datasets version" in failure.evalue
        assert not any(c.get("outputs") for c in done.cells if c.id == "run")
        assert not (tree.working / "submission.csv").exists()
    finally:
        remove_tree(tree.root)
