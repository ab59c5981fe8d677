"""Run a command with no network, as Kaggle's scored rerun does.

The command runs in a fresh network namespace (`unshare -n`) whose only interface is
loopback, brought up first because a Jupyter kernel talks to its client over 127.0.0.1.
Where a mount namespace can be had too (`unshare -m`, root), the paths asked for are
bind-mounted read-only inside it, like `/kaggle/input`.

When no namespace can be made (no `unshare` or `ip`, not root), `probe()` says why and the
caller runs the command unchanged, with the network still there, and says so.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

NETWORK_NONE = "none"
NETWORK_AVAILABLE = "available"


@dataclass(frozen=True)
class Isolation:
    """What a command started through `isolated_argv` will see."""

    network: str  # NETWORK_NONE: loopback only; NETWORK_AVAILABLE: the host's network
    readonly: bool  # True: the read-only paths are enforced by a read-only bind mount
    reason: str  # why the network (or read-only enforcement) is not isolated; "" when it is
    unshare: str = "unshare"
    ip: str = "ip"

    @property
    def isolated(self) -> bool:
        return self.network == NETWORK_NONE


def _try(argv: Sequence[str]) -> str:
    """'' when `argv` exits 0, else a one-line reason."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if done.returncode == 0:
        return ""
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit status {done.returncode}"


def probe_uncached(unshare: str | None = None, ip: str | None = None) -> Isolation:
    """Find out whether a loopback-only network namespace (and a mount namespace) can be made."""
    unshare = unshare or shutil.which("unshare")
    ip = ip or shutil.which("ip") or (str(Path("/usr/sbin/ip")) if Path("/usr/sbin/ip").is_file() else None)
    if not unshare:
        return Isolation(NETWORK_AVAILABLE, False, "`unshare` (util-linux) is not installed")
    if not ip:
        return Isolation(NETWORK_AVAILABLE, False, "`ip` (iproute2) is not installed; loopback cannot be brought up")
    up = f"{shlex.quote(ip)} link set lo up"
    with_mount = _try([unshare, "-n", "-m", "--propagation", "private", "--", "sh", "-c", up])
    if not with_mount:
        return Isolation(NETWORK_NONE, True, "", unshare, ip)
    net_only = _try([unshare, "-n", "--", "sh", "-c", up])
    if not net_only:
        return Isolation(NETWORK_NONE, False, f"no mount namespace ({with_mount})", unshare, ip)
    return Isolation(
        NETWORK_AVAILABLE, False, f"`unshare -n` failed ({net_only}); run as root to dry-run without network"
    )


@functools.cache
def probe() -> Isolation:
    """`probe_uncached()`, done once per process."""
    return probe_uncached()


def isolated_argv(argv: Sequence[str], isolation: Isolation, readonly: Sequence[Path] = ()) -> list[str]:
    """`argv` wrapped to run with loopback only and `readonly` paths mounted read-only.

    Returned unchanged when `isolation` says no namespace can be made.
    """
    if not isolation.isolated:
        return list(argv)
    lines = ["set -e", f"{shlex.quote(isolation.ip)} link set lo up"]
    if isolation.readonly:
        for path in readonly:
            q = shlex.quote(str(Path(path).resolve()))
            lines.append(f"mount --bind {q} {q}")
            lines.append(f"mount -o remount,bind,ro {q}")
    lines.append('exec "$@"')
    script = "\n".join(lines)
    ns = ["-n", "-m", "--propagation", "private"] if isolation.readonly else ["-n"]
    return [isolation.unshare, *ns, "--", "sh", "-c", script, "bundler-netns", *argv]


def pid_alive(pid: int) -> bool:
    """Whether a process of this id exists (one that is not ours to signal still counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
