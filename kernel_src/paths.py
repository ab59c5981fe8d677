"""Kaggle's folders and the files the notebook writes: each name written once, here.

Kaggle mounts the competition's data and the attached datasets under `INPUT_ROOT` and keeps
what the notebook writes to `WORKING_DIR`; a code competition scores `SUBMISSION_FILE` there.
`PROFILE_FILE` is the run's record beside it (`kernel_src.profiler`). The notebook's setup and
run cells, the renderer's CONFIG, the dry-run, tune and the remote commands read these names
here. No imports: any module may use it, `kernel_src.bundle` before the wheels are installed too.
"""

from __future__ import annotations

INPUT_ROOT = "/kaggle/input"  # where Kaggle mounts the notebook's inputs (read-only)
WORKING_DIR = "/kaggle/working"  # the notebook's output folder: what Kaggle keeps after the run
SUBMISSION_FILE = "submission.csv"  # the file Kaggle scores (its name is Kaggle's rule)
PROFILE_FILE = "profile.json"  # the run's timings, counts and problems (kernel_src.profiler)
