"""The no-network runner: a real namespace where one can be made, the fallback otherwise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bundler.sandbox import NETWORK_AVAILABLE, isolated_argv, probe, probe_uncached

ISOLATION = probe()
needs_netns = pytest.mark.skipif(not ISOLATION.isolated, reason=f"no network namespace here: {ISOLATION.reason}")

OUTSIDE = """
import socket, errno, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(3)
try:
    s.connect(("192.0.2.1", 80))
except OSError as e:
    print("errno", e.errno, errno.errorcode.get(e.errno, "?"))
    sys.exit(3)
print("connected")
"""

LOOPBACK = """
import socket
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
cli = socket.create_connection(srv.getsockname(), timeout=3)
conn, _ = srv.accept(); cli.sendall(b"ping"); print(conn.recv(4).decode())
"""


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@needs_netns
def test_outside_address_is_unreachable() -> None:
    done = _run(isolated_argv([sys.executable, "-c", OUTSIDE], ISOLATION))
    assert done.returncode == 3, done.stdout + done.stderr
    assert "ENETUNREACH" in done.stdout


@needs_netns
def test_loopback_works() -> None:
    done = _run(isolated_argv([sys.executable, "-c", LOOPBACK], ISOLATION))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ping"


@needs_netns
def test_readonly_paths_refuse_writes_and_exit_status_passes_through(tmp_path: Path) -> None:
    if not ISOLATION.readonly:
        pytest.skip("no mount namespace here")
    ro = tmp_path / "input"
    ro.mkdir()
    (ro / "a.txt").write_text("x")
    code = f"open({str(ro / 'b.txt')!r}, 'w')"
    done = _run(isolated_argv([sys.executable, "-c", code], ISOLATION, readonly=[ro]))
    assert done.returncode != 0
    assert "Read-only file system" in done.stderr
    assert not (ro / "b.txt").exists()
    # outside the namespace the folder is writable as before
    (ro / "c.txt").write_text("y")
    done = _run(isolated_argv([sys.executable, "-c", "raise SystemExit(7)"], ISOLATION))
    assert done.returncode == 7


def test_missing_tools_fall_back_with_a_reason(tmp_path: Path) -> None:
    iso = probe_uncached(unshare=str(tmp_path / "no-unshare"), ip="ip")
    assert iso.network == NETWORK_AVAILABLE
    assert iso.reason
    argv = [sys.executable, "-c", "print(1)"]
    assert isolated_argv(argv, iso) == argv
