"""Pytest fixtures: run the real berth-registry binary for py-consul compatibility tests."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
NODE = "berth-pytest"
READY_GUARD_S = 60


def pytest_sessionfinish(session, exitstatus):
    # An empty selection (e.g. `-k` matching nothing) is not a failure of the suite.
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.OK


def _binary() -> Path:
    explicit = os.environ.get("BERTH_REGISTRY_BIN")
    if explicit:
        return Path(explicit)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    path = target / "debug" / "berth-registry"
    if not path.exists():
        subprocess.run(
            ["cargo", "build", "-p", "berth-registry", "--bin", "berth-registry"],
            cwd=ROOT,
            check=True,
        )
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """A berth-registry child process on a free loopback port with a temporary data dir."""

    def __init__(self, extra_args: list[str] | None = None) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="berth-pytest-")
        self.port = _free_port()
        self.log_path = Path(self.dir.name) / "server.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                str(_binary()),
                "server",
                "--http-addr",
                f"127.0.0.1:{self.port}",
                "--data-dir",
                str(Path(self.dir.name) / "data"),
                "--node-name",
                NODE,
                *(extra_args or []),
            ],
            env={k: v for k, v in os.environ.items() if not k.startswith("BERTH_REGISTRY_")},
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        url = f"http://127.0.0.1:{self.port}/v1/status/leader"
        deadline = time.monotonic() + READY_GUARD_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"berth-registry exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200 and resp.read().strip() not in (b"", b'""'):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"berth-registry not ready on port {self.port}:\n{self.tail()}")

    def tail(self) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:])

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()
        self.dir.cleanup()


@pytest.fixture(scope="module")
def registry():
    server = Registry()
    yield server
    server.stop()


@pytest.fixture
def c(registry):
    import consul

    return consul.Consul(host="127.0.0.1", port=registry.port)


@pytest.fixture
def prefix(request) -> str:
    """A key prefix unique to the test."""
    return f"py/{request.node.name}"
