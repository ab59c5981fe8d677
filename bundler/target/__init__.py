"""The Kaggle image as a target: its interpreter (`find_target_python`), its environment as data
(`TargetEnv`: tags, markers, uv's platform), its package baseline (`load_baseline`, the snapshots
shipped in `baselines/`, `bundler baseline from-sources`) and the closure of `target.requirements`
resolved against it with uv. Used by the dataset, dry-run and remote stages; imports none of them."""

from bundler.target.baseline import Baseline, Pin, baseline_path, is_protected, load_baseline, parse_freeze
from bundler.target.baseline_sources import MadeBaseline, from_sources_command
from bundler.target.env import TargetEnv, target_env
from bundler.target.interpreter import TargetPython, find_target_python, how_to_get
from bundler.target.resolve import REQUESTED, Resolved, parse_requirements, resolve, uv_command

__all__ = [
    "REQUESTED",
    "Baseline",
    "MadeBaseline",
    "Pin",
    "Resolved",
    "TargetEnv",
    "TargetPython",
    "baseline_path",
    "find_target_python",
    "from_sources_command",
    "how_to_get",
    "is_protected",
    "load_baseline",
    "parse_freeze",
    "parse_requirements",
    "resolve",
    "target_env",
    "uv_command",
]
