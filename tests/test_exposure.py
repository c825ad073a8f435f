"""What a running study exposes to the network. The harness starts no HTTP
server; Ray's dashboard stays off; Ray 2.60 binds its core gRPC ports on every
interface (not configurable there), so they must refuse a client without the
cluster's token."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import cli_env, start_cli
from tests.test_fault_tolerance import _descendants


def _listening_sockets() -> dict[int, tuple[str, int]]:
    """inode -> (address, port) of every TCP socket in LISTEN state."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            addr_hex, port_hex = fields[1].split(":")
            raw = bytes.fromhex(addr_hex)
            # the kernel prints each 32-bit word in host (little-endian) order
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            out[int(fields[9])] = (str(ipaddress.ip_address(words)), int(port_hex, 16))
    return out


def _listeners(pids: list[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) for each listening socket those processes hold."""
    sockets, found = _listening_sockets(), []
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in sockets:
                    found.append((pid, *sockets[inode]))
    return found


def _gcs_accepts(address: str, token: str | None) -> subprocess.CompletedProcess:
    code = (
        "from ray._raylet import GcsClient\n"
        f"GcsClient(address='{address}').internal_kv_get(b'probe', None, timeout=5)\n"
    )
    env = {**cli_env(), "RAY_AUTH_MODE": "token"}
    if token is not None:
        env["RAY_AUTH_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


def test_a_local_study_starts_no_dashboard_and_ray_refuses_a_wrong_token(tmp_path):
    args = ["gan_stability", "--smoke", "--num-samples", "1", "--seeds", "1", "--tracking-uri"]
    args += [f"sqlite:///{tmp_path}/store.db", "--set", "arch=mlp", "--set", "epochs=60"]
    cli = start_cli(args, tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not any("ImplicitFunc" in cmd for _, cmd in _descendants(cli.pid)):
            assert cli.poll() is None and time.monotonic() < deadline, "no trial started"
            time.sleep(0.5)
        tree = _descendants(cli.pid)
        names = {pid: Path(f"/proc/{pid}/comm").read_text().strip() for pid, _ in tree}
        listeners = _listeners([cli.pid, *names])
        gcs = [(a, p) for pid, a, p in listeners if names.get(pid) == "gcs_server"]
        assert gcs, listeners
        assert not [p for _, _, p in listeners if p == 8265], "the Ray dashboard is serving"
        address = f"127.0.0.1:{gcs[0][1]}"
        refused = _gcs_accepts(address, "0" * 64)
        assert refused.returncode != 0 and "InvalidAuthToken" in refused.stderr
        # the control: the token Ray wrote for this local cluster gets in
        assert _gcs_accepts(address, None).returncode == 0
    finally:
        cli.kill()
        cli.wait()
