"""The dry-run's child process: one notebook executed by one registered engine.

    python -m bundler.dryrun._child NOTEBOOK_IN NOTEBOOK_OUT RESULT_JSON --cwd DIR [--timeout S]
        [--engine nbclient|papermill]

Runs in its own process so that the dry-run can put it (and the kernel it starts) in a network
namespace; `bundler.dryrun.execution` starts it and follows it. What it prints (the events, the
executed notebook, RESULT_JSON) is `bundler.dryrun.engines`'s contract. SIGTERM stops the run as
Ctrl-C does: the engine still saves the notebook and the result, and stops its kernel.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from bundler.dryrun.engines import ENGINES, NbclientEngine, get_engine


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)  # so that `finally` writes the results and stops the kernel
    parser = argparse.ArgumentParser(prog="python -m bundler.dryrun._child")
    parser.add_argument("notebook", type=Path)
    parser.add_argument("executed", type=Path)
    parser.add_argument("result", type=Path)
    parser.add_argument("--cwd", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=None, help="seconds per cell")
    parser.add_argument("--engine", choices=sorted(ENGINES), default=NbclientEngine.name)
    args = parser.parse_args(argv)
    engine = get_engine(args.engine)()
    return engine.execute_notebook(args.notebook, args.executed, args.result, cwd=args.cwd, timeout=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
