"""The Kaggle-like tree: layout, links instead of copies, read-only input folders, clean removal."""

from __future__ import annotations

from pathlib import Path

from bundler.dryrun.tree import dataset_slug, make_tree, mount_dir, remove_tree


def test_tree_layout_links_and_removal(tmp_path: Path) -> None:
    bundle = tmp_path / "dataset"
    bundle.mkdir()
    (bundle / "bundle.json").write_text("{}")
    (bundle / "m.safetensors").write_bytes(b"w" * 10)
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"jpg")
    (images / "b.PNG").write_bytes(b"png")
    (images / "notes.txt").write_text("not an image")
    sample = tmp_path / "my_sample.csv"
    sample.write_text("ImageId_ClassId,EncodedPixels\n")

    tree = make_tree(
        tmp_path / "tree",
        bundle_src=bundle,
        dataset_id="owner/my-bundle",
        competition_slug="severstal-steel-defect-detection",
        test_dir=images,
        test_images_name="test_images",
        sample_submission_src=sample,
        sample_submission_name="sample_submission.csv",
    )
    assert tree.bundle_dir == tmp_path / "tree" / "input" / "my-bundle"
    assert sorted(p.name for p in tree.bundle_dir.iterdir()) == ["bundle.json", "m.safetensors"]
    assert sorted(p.name for p in tree.test_images.iterdir()) == ["a.jpg", "b.PNG"]
    assert tree.sample_submission == tree.competition_dir / "sample_submission.csv"
    assert tree.sample_submission.read_text() == sample.read_text()
    assert tree.working.is_dir() and not any(tree.working.iterdir())
    assert tree.linked in ("hardlink", "symlink", "mixed")
    if tree.linked == "hardlink":
        assert (tree.bundle_dir / "m.safetensors").samefile(bundle / "m.safetensors")
    for folder in (tree.input_root, tree.bundle_dir, tree.test_images):
        assert folder.stat().st_mode & 0o222 == 0, folder

    remove_tree(tree.root)
    assert not tree.root.exists()
    assert (bundle / "m.safetensors").read_bytes() == b"w" * 10  # the originals stay
    assert (images / "a.jpg").is_file()


def test_dataset_slug() -> None:
    assert dataset_slug("owner/my-bundle") == "my-bundle"


def test_a_bundle_in_parts_is_laid_out_as_kaggle_mounts_each_part(tmp_path: Path) -> None:
    weights, wheels = tmp_path / "weights", tmp_path / "wheels"
    for folder, files in ((weights, ("bundle.json", "m.safetensors")), (wheels, ("x-1.0-py3-none-any.whl",))):
        folder.mkdir()
        for name in (*files, "bundle-part.json"):
            (folder / name).write_text(name)
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"jpg")
    sample = tmp_path / "sample.csv"
    sample.write_text("ImageId,EncodedPixels\n")
    tree = make_tree(
        tmp_path / "tree",
        bundle_src=tmp_path / "unused",
        dataset_id="owner/my-bundle",
        competition_slug="comp",
        test_dir=images,
        test_images_name="test_images",
        sample_submission_src=sample,
        sample_submission_name="sample_submission.csv",
        parts=[("owner/my-bundle-wheels", wheels), ("owner/my-bundle", weights)],
    )
    assert tree.bundle_dir == tree.input_root / "my-bundle"
    assert sorted(p.name for p in tree.bundle_dir.iterdir()) == ["bundle-part.json", "bundle.json", "m.safetensors"]
    wheels_dir = tree.input_root / "my-bundle-wheels"
    assert sorted(p.name for p in wheels_dir.iterdir()) == ["bundle-part.json", "x-1.0-py3-none-any.whl"]
    assert wheels_dir.stat().st_mode & 0o222 == 0
    remove_tree(tree.root)


def test_a_model_part_is_mounted_where_kaggle_mounts_models(tmp_path: Path) -> None:
    assert mount_dir(tmp_path, "me/unet/pyTorch/default") == tmp_path / "models/me/unet/pyTorch/default/1"
    assert mount_dir(tmp_path, "me/my-bundle") == tmp_path / "my-bundle"
