"""A Kaggle-like folder tree for a dry-run, laid out in a temporary folder:

    <root>/input/<dataset-slug>/...            the built bundle's files (flat)
    <root>/input/<wheels-slug>/...             a bundle in parts (`dataset.wheels_id`): each part
                                                at its own dataset's slug, as Kaggle mounts them
    <root>/input/models/<owner>/<model>/<framework>/<variation>/1/...   the weights as a Model
    <root>/input/<competition-slug>/<test_images>/...   the test images
    <root>/input/<competition-slug>/<input path>        or a file reader's files ([input] path, ids)
    <root>/input/<competition-slug>/<sample_submission>
    <root>/working/                             the notebook's current folder and output

Files are hard links where the filesystem allows (no copy, and a read-only bind mount of
`input/` then really refuses writes), else symbolic links. The `input/` folders are made
read-only (mode 0555) as well, which binds a non-root process; root is held by the mount.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
READ_ONLY_DIR = stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH


@dataclass(frozen=True)
class KaggleTree:
    root: Path
    input_root: Path  # like /kaggle/input
    bundle_dir: Path  # input/<dataset-slug>
    competition_dir: Path  # input/<competition-slug>
    test_images: Path  # input/<competition-slug>/<test_images>; for a file reader the competition folder
    sample_submission: Path  # input/<competition-slug>/<sample_submission>
    working: Path  # like /kaggle/working
    linked: str  # "hardlink", "symlink" or "mixed": how the input files were placed


def _place(src: Path, dest: Path) -> str:
    try:
        os.link(src, dest)
        return "hardlink"
    except OSError:
        dest.symlink_to(src.resolve())
        return "symlink"


def _link_files(files: list[Path], dest_dir: Path) -> set[str]:
    dest_dir.mkdir(parents=True, exist_ok=True)
    return {_place(f, dest_dir / f.name) for f in files}


def image_files(folder: Path) -> list[Path]:
    """The image files directly inside `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def dataset_slug(dataset_id: str) -> str:
    """'owner/slug' -> 'slug': the folder Kaggle mounts a dataset under."""
    return dataset_id.rsplit("/", 1)[-1]


def mount_dir(input_root: Path, ref: str) -> Path:
    """Where Kaggle mounts `ref`: a dataset `owner/slug` at `<slug>/`, a model variation
    `owner/model/framework/variation` at `models/owner/model/framework/variation/1/` (a dry-run's version)."""
    parts = ref.split("/")
    if len(parts) == 4:
        return input_root.joinpath("models", *parts, "1")
    return input_root / dataset_slug(ref)


def make_tree(
    root: Path,
    *,
    bundle_src: Path,
    dataset_id: str,
    competition_slug: str,
    test_dir: Path,
    test_images_name: str,
    sample_submission_src: Path,
    sample_submission_name: str,
    parts: Sequence[tuple[str, Path]] = (),
    input_files: Sequence[str] = (),
) -> KaggleTree:
    """Lay the tree out under `root` (which must be empty or absent).

    `parts`: (dataset id, folder) of each part of a bundle shipped in parts, laid out instead of
    `bundle_src`; `bundle_dir` is then the part of `dataset_id` (the one carrying bundle.json).
    `input_files`: a file reader's files, relative to `test_dir` (the local data folder), placed at
    the same paths under the competition's folder instead of an image folder."""
    root.mkdir(parents=True, exist_ok=True)
    input_root = root / "input"
    bundle_dir = mount_dir(input_root, dataset_id)
    competition_dir = input_root / competition_slug
    test_images = competition_dir if input_files else competition_dir / test_images_name
    sample = competition_dir / sample_submission_name
    working = root / "working"
    working.mkdir(parents=True)

    ways: set[str] = set()
    part_dirs = []
    for ref, folder in parts or [(dataset_id, bundle_src)]:
        part_dirs.append(mount_dir(input_root, ref))
        ways |= _link_files(sorted(p for p in folder.iterdir() if p.is_file()), part_dirs[-1])
    if input_files:
        for name in input_files:
            dest = competition_dir / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            ways.add(_place(test_dir / name, dest))
    else:
        ways |= _link_files(image_files(test_dir), test_images)
    competition_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sample_submission_src, sample)  # small; a copy keeps the user's file out of reach

    inner = {competition_dir / up for name in input_files for up in Path(name).parents} - {competition_dir}
    for folder in (*sorted(inner, reverse=True), test_images, *part_dirs, competition_dir):
        folder.chmod(READ_ONLY_DIR)
    for folder in sorted({p for d in part_dirs for p in d.parents if input_root in p.parents}, reverse=True):
        folder.chmod(READ_ONLY_DIR)  # models/<owner>/...: the folders between the input root and a model
    input_root.chmod(READ_ONLY_DIR)
    linked = ways.pop() if len(ways) == 1 else "mixed"
    return KaggleTree(root, input_root, bundle_dir, competition_dir, test_images, sample, working, linked)


def remove_tree(root: Path) -> None:
    """Delete a tree made by `make_tree`, read-only folders included. The linked originals stay."""
    if not root.exists():
        return
    for folder, dirs, _files in os.walk(root):
        for d in dirs:
            p = Path(folder) / d
            if not p.is_symlink():
                p.chmod(stat.S_IRWXU)
    root.chmod(stat.S_IRWXU)
    shutil.rmtree(root)
