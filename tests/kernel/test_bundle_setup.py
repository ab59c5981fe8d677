"""kernel_src.bundle: find, verify and install the bundle, find the competition data (stdlib only)."""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

import kernel_src.bundle as bundle_mod
from kernel_src.bundle import (
    OFFLINE_ENV,
    find_bundle,
    find_competition_data,
    gather_parts,
    install_wheels,
    kernel_src_hash,
    prepare,
    set_offline_env,
    verify_bundle,
)
from kernel_src.errors import BundleError

ROOT = Path(__file__).resolve().parents[2]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_bundle(folder: Path, name: str = "demo", files: dict[str, bytes] | None = None, **extra: Any) -> Path:
    """A bundle folder with a manifest listing `files` (wheels end in .whl, the rest are weights)."""
    files = files if files is not None else {"unet.safetensors": b"weights", "x-1.0-py3-none-any.whl": b"wheel"}
    folder.mkdir(parents=True, exist_ok=True)
    for file, data in files.items():
        (folder / file).write_bytes(data)
    entries = {
        "wheels": [
            {"file": f, "name": f.split("-")[0], "version": f.split("-")[1], "sha256": sha(d), "size": len(d)}
            for f, d in files.items()
            if f.endswith(".whl")
        ],
        "weights": [{"file": f, "sha256": sha(d), "size": len(d)} for f, d in files.items() if not f.endswith(".whl")],
    }
    manifest = {"format": 1, "bundle": name, "hash": sha(name.encode()), **entries, **extra}
    (folder / "bundle.json").write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize(
    ("module", "kernel_src_imports"),
    [
        ("bundle", {"errors", "paths", "inputs"}),
        ("errors", set()),
        ("paths", set()),
        ("inputs", {"errors", "settings"}),
        ("settings", {"errors"}),
    ],
)
def test_module_imports_only_the_standard_library(module: str, kernel_src_imports: set[str]) -> None:
    """bundle.py runs before the wheels are installed: it and the modules it imports are stdlib only."""
    tree = ast.parse((ROOT / "kernel_src" / f"{module}.py").read_text())
    absolute = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level and n.module]
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in absolute if n.module}
    assert names <= set(sys.stdlib_module_names) | {"__future__"}, names
    relative = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level}
    assert relative == kernel_src_imports, relative


@pytest.mark.parametrize("layout", ["demo-slug", "datasets/owner/demo-slug", "owner/demo-slug"])
def test_find_bundle_in_each_mount_layout(tmp_path: Path, layout: str) -> None:
    make_bundle(tmp_path / "input" / "other", name="someone-elses")
    folder = make_bundle(tmp_path / "input" / layout)
    assert find_bundle(tmp_path / "input", "demo") == folder


def test_find_bundle_prefers_the_rendered_hash_when_attached_twice(tmp_path: Path) -> None:
    make_bundle(tmp_path / "input" / "a")
    b = make_bundle(tmp_path / "input" / "b")
    data = json.loads((b / "bundle.json").read_text())
    newer = sha(b"newer")
    (b / "bundle.json").write_text(json.dumps({**data, "hash": newer}))
    assert find_bundle(tmp_path / "input", "demo", bundle_hash=newer) == b
    assert find_bundle(tmp_path / "input", "demo") == tmp_path / "input" / "a"


def test_find_bundle_not_found_names_what_it_saw_and_the_fix(tmp_path: Path) -> None:
    make_bundle(tmp_path / "input" / "other", name="someone-elses")
    make_bundle(tmp_path / "input" / "a" / "b" / "c" / "d" / "e" / "f" / "too-deep")  # 7 levels: past a Model
    with pytest.raises(BundleError) as e:
        find_bundle(tmp_path / "input", "demo")
    message = str(e.value)
    assert "bundle 'demo' not found" in message
    assert "'someone-elses'" in message
    assert "attach the bundle's dataset" in message
    assert "CONFIG['bundle_dir']" in message
    with pytest.raises(BundleError, match="does not exist"):
        find_bundle(tmp_path / "nowhere", "demo")


def test_find_bundle_names_a_manifest_that_breaks_the_contract(tmp_path: Path) -> None:
    folder = make_bundle(tmp_path / "input" / "demo-slug")
    data = json.loads((folder / "bundle.json").read_text())
    (folder / "bundle.json").write_text(json.dumps({**data, "format": 0}))
    with pytest.raises(BundleError, match=r"demo-slug \(unusable: manifest format 0\)"):
        find_bundle(tmp_path / "input", "demo")


def test_find_bundle_override(tmp_path: Path) -> None:
    folder = make_bundle(tmp_path / "anywhere")
    assert find_bundle(tmp_path / "empty", "demo", override=folder) == folder
    with pytest.raises(BundleError, match="is bundle 'demo', not 'other'"):
        find_bundle(tmp_path / "empty", "other", override=folder)
    with pytest.raises(BundleError, match="no bundle manifest here"):
        find_bundle(tmp_path / "empty", "demo", override=tmp_path)


def test_verify_bundle_passes_a_complete_bundle(tmp_path: Path) -> None:
    folder = make_bundle(tmp_path / "b")
    assert verify_bundle(folder)["bundle"] == "demo"


def _split(whole: Path, weights_dir: Path, wheels_dir: Path) -> None:
    """Move a bundle made by make_bundle into two parts, as `bundler.dataset.parts` ships it."""
    for folder, part in ((weights_dir, "weights"), (wheels_dir, "wheels")):
        folder.mkdir(parents=True)
        (folder / "bundle-part.json").write_text(json.dumps({"bundle": "demo", "part": part}))
    for f in whole.iterdir():
        f.rename((wheels_dir if f.name.endswith(".whl") else weights_dir) / f.name)


@pytest.mark.parametrize(
    ("weights_at", "wheels_at"),
    [
        ("bundle-data", "bundle-wheels"),  # /kaggle/input/<slug>/
        ("datasets/me/bundle-data", "datasets/me/bundle-wheels"),  # /kaggle/input/datasets/<owner>/<slug>/
        ("bundle-data", "models/me/wheels/other/default/3"),  # 6 levels down, as a Kaggle Model mounts
        ("models/me/unet/pyTorch/default/2", "datasets/me/bundle-wheels"),  # the weights as a Kaggle Model
    ],
)
def test_a_bundle_in_parts_is_found_joined_and_verified(tmp_path: Path, weights_at: str, wheels_at: str) -> None:
    root = tmp_path / "input"
    _split(make_bundle(tmp_path / "whole"), root / weights_at, root / wheels_at)
    found = find_bundle(root, "demo")
    assert found == root / weights_at
    joined = gather_parts(found, root, bundle_mod.read_manifest(found), tmp_path / "joined")
    assert joined == tmp_path / "joined"
    assert sorted(p.name for p in joined.iterdir()) == ["bundle.json", "unet.safetensors", "x-1.0-py3-none-any.whl"]
    assert (joined / "x-1.0-py3-none-any.whl").resolve() == (root / wheels_at / "x-1.0-py3-none-any.whl")
    assert verify_bundle(joined)["bundle"] == "demo"


def test_a_missing_part_is_named_and_a_whole_bundle_is_not_joined(tmp_path: Path) -> None:
    root = tmp_path / "input"
    whole = make_bundle(root / "whole")
    assert gather_parts(whole, root, bundle_mod.read_manifest(whole), tmp_path / "joined") == whole
    _split(whole, root / "data", tmp_path / "not-attached")
    joined = gather_parts(root / "data", root, bundle_mod.read_manifest(root / "data"), tmp_path / "joined")
    with pytest.raises(BundleError, match=r"wheel x-1\.0-py3-none-any\.whl is missing"):
        verify_bundle(joined)


def test_verify_bundle_names_every_missing_or_corrupt_file(tmp_path: Path) -> None:
    files = {
        "unet.safetensors": b"weights",
        "fpn.safetensors": b"more weights",
        "cls.pt": b"torchscript",
        "x-1.0-py3-none-any.whl": b"wheel",
    }
    folder = make_bundle(tmp_path / "b", files=files)
    (folder / "x-1.0-py3-none-any.whl").unlink()
    (folder / "unet.safetensors").write_bytes(b"weightz")  # same size, other bytes
    (folder / "fpn.safetensors").write_bytes(b"short")
    with pytest.raises(BundleError) as e:
        verify_bundle(folder)
    message = str(e.value)
    assert "wheel x-1.0-py3-none-any.whl is missing" in message
    assert "weight file unet.safetensors is corrupt" in message
    assert "weight file fpn.safetensors has 5 bytes, the manifest says 12" in message
    assert "cls.pt" not in message
    assert "kaggle datasets version" in message


def test_verify_bundle_refuses_a_broken_manifest(tmp_path: Path) -> None:
    folder = make_bundle(tmp_path / "b")
    (folder / "bundle.json").write_text("{")
    with pytest.raises(BundleError, match=r"bundle\.json: the manifest cannot be read"):
        verify_bundle(folder)
    make_bundle(folder)
    data = json.loads((folder / "bundle.json").read_text())
    data["weights"][0]["file"] = "../escape"
    (folder / "bundle.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r'weights\[0\] has no flat "file" name; re-upload the bundle'):
        verify_bundle(folder)
    for broken, problem in (
        ({"format": 2}, "manifest format 2"),
        ({"hash": "h-demo"}, 'no 64-hex "hash"'),
        ({"wheels": {}}, '"wheels" is not a list'),
    ):
        (folder / "bundle.json").write_text(json.dumps({**data, "weights": [], **broken}))
        with pytest.raises(BundleError, match=problem):
            verify_bundle(folder)


def test_install_wheels_auto_skips_what_is_installed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    version = importlib.metadata.version("pytest")
    manifest = {"wheels": [{"file": f"pytest-{version}-py3-none-any.whl", "name": "pytest", "version": version}]}
    assert install_wheels(tmp_path, manifest, "auto") == ()
    assert "already installed" in capsys.readouterr().out
    assert install_wheels(tmp_path, manifest, False) == ()
    assert install_wheels(tmp_path, {"wheels": []}, "always") == ()
    with pytest.raises(BundleError, match="must be one of"):
        install_wheels(tmp_path, manifest, "sometimes")


def test_failing_pip_names_the_wheel_and_shows_its_output(tmp_path: Path) -> None:
    (tmp_path / "brokenpkg-1.0-py3-none-any.whl").write_bytes(b"not a zip")
    manifest = {"wheels": [{"file": "brokenpkg-1.0-py3-none-any.whl", "name": "brokenpkg", "version": "1.0"}]}
    with pytest.raises(BundleError) as e:
        install_wheels(tmp_path, manifest, "auto")
    message = str(e.value)
    assert "could not install the vendored wheel(s) brokenpkg-1.0-py3-none-any.whl" in message
    assert "pip said:" in message
    assert importlib.metadata.version("pytest")  # the environment is untouched


def _tiny_wheel(folder: Path, name: str, version: str) -> Path:
    path = folder / f"{name}-{version}-py3-none-any.whl"
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"VALUE = 42\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{k},,\n" for k in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for k, v in files.items():
            z.writestr(k, v)
        z.writestr(f"{dist}/RECORD", record)
    return path


def test_install_wheels_installs_offline(tmp_path: Path) -> None:
    """A real offline pip install, into a target folder so the test environment is not touched."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    _tiny_wheel(bundle, "bundlertinypkg", "1.0")
    manifest = {"wheels": [{"file": "bundlertinypkg-1.0-py3-none-any.whl", "name": "bundlertinypkg", "version": "1.0"}]}
    target = tmp_path / "site"
    code = (
        "import json, sys\nfrom pathlib import Path\nfrom kernel_src.bundle import install_wheels\n"
        f"print(install_wheels(Path({str(bundle)!r}), json.loads({json.dumps(manifest)!r}), 'auto'))\n"
        "import bundlertinypkg\nprint(bundlertinypkg.VALUE)\n"
    )
    env = {**os.environ, "PIP_TARGET": str(target), "PYTHONPATH": f"{target}{os.pathsep}{ROOT}", "PIP_NO_INDEX": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "('bundlertinypkg-1.0-py3-none-any.whl',)" in done.stdout
    assert done.stdout.strip().endswith("42")


@pytest.mark.parametrize(
    "layout", ["severstal-steel-defect-detection", "competitions/severstal-steel-defect-detection"]
)
def test_find_competition_data_in_both_layouts(tmp_path: Path, layout: str) -> None:
    make_bundle(tmp_path / "input" / "bundle")
    folder = tmp_path / "input" / layout
    (folder / "test_images").mkdir(parents=True)
    (folder / "sample_submission.csv").write_text("ImageId,EncodedPixels,ClassId\n")
    data = find_competition_data(tmp_path / "input", "sample_submission.csv", "test_images")
    assert data.sample_submission == folder / "sample_submission.csv"
    assert data.test_dir == folder / "test_images"


def test_find_competition_data_says_what_it_looked_for(tmp_path: Path) -> None:
    half = tmp_path / "input" / "comp"
    half.mkdir(parents=True)
    (half / "sample_submission.csv").write_text("x\n")
    with pytest.raises(BundleError) as e:
        find_competition_data(tmp_path / "input", "sample_submission.csv", "test_images")
    message = str(e.value)
    assert "sample_submission.csv with a test_images/ folder beside it" in message
    assert f"only one of the two is in: {half}" in message
    assert "CONFIG['data_dir']" in message
    with pytest.raises(BundleError, match=r"CONFIG\['data_dir'\] = .* does not hold"):
        find_competition_data(tmp_path / "input", "sample_submission.csv", "test_images", override=half)
    (half / "test_images").mkdir()
    assert find_competition_data(tmp_path, "sample_submission.csv", "test_images", override=half).folder == half


def test_prepare_goes_offline_and_finds_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key in OFFLINE_ENV:
        monkeypatch.setenv(key, "0")  # restored after the test
    version = importlib.metadata.version("pytest")
    wheel = f"pytest-{version}-py3-none-any.whl"
    make_bundle(tmp_path / "input" / "ds", files={"m.safetensors": b"w", wheel: b"x"})
    manifest = json.loads((tmp_path / "input" / "ds" / "bundle.json").read_text())
    manifest["wheels"][0].update(name="pytest", version=version)
    (tmp_path / "input" / "ds" / "bundle.json").write_text(json.dumps(manifest))
    comp = tmp_path / "input" / "competitions" / "comp"
    (comp / "test_images").mkdir(parents=True)
    (comp / "sample_submission.csv").write_text("x\n")
    prepared = prepare({"bundle_name": "demo", "bundle_hash": "other", "input_root": str(tmp_path / "input")})
    assert all(os.environ[k] == v for k, v in OFFLINE_ENV.items())
    assert prepared.bundle_dir == tmp_path / "input" / "ds"
    assert prepared.data.test_dir == comp / "test_images"
    assert prepared.installed == ()
    err = capsys.readouterr().err
    assert "re-render with `bundler render-notebook`" in err


def test_set_offline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in OFFLINE_ENV:
        monkeypatch.delenv(key, raising=False)
    set_offline_env()
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["PIP_NO_INDEX"] == "1"


def test_kernel_src_hash_follows_every_module(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("A = 1\n")
    (tmp_path / "pkg" / "sub" / "b.py").write_text("B = 1\n")
    first = kernel_src_hash(tmp_path / "pkg")
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "a.py").write_text("ignored\n")
    (tmp_path / "pkg" / "notes.txt").write_text("not a module\n")
    assert kernel_src_hash(tmp_path / "pkg") == first
    (tmp_path / "pkg" / "sub" / "b.py").write_text("B = 2\n")
    assert kernel_src_hash(tmp_path / "pkg") != first
    assert bundle_mod.MANIFEST == "bundle.json"
