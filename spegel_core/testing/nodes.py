"""Real ``spegel registry`` processes on loopback addresses, for tests and benchmarks."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

_counter = itertools.count()
#: The metrics port of every test node (on its own loopback address, as in a cluster).
METRICS_PORT = 9090


def free_loopback_ip(port: int = 5000) -> str:
    """A 127.0.x.y address whose ``port`` (TCP and UDP ``port + 1``) and metrics port
    (TCP :data:`METRICS_PORT`) are free right now.

    Each call returns a different address, so tests can run nodes on the same
    ports as a real cluster without colliding.
    """
    base = 10 + (os.getpid() % 200)
    for _ in range(2000):
        n = next(_counter)
        ip = f"127.{base}.{(n // 250) % 250}.{2 + n % 250}"
        if _bindable(ip, port):
            return ip
    raise RuntimeError("no free loopback address found")


def _bindable(ip: str, port: int) -> bool:
    for kind, number in ((socket.SOCK_STREAM, port), (socket.SOCK_DGRAM, port + 1),
                         (socket.SOCK_STREAM, METRICS_PORT)):
        with socket.socket(socket.AF_INET, kind) as sock:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((ip, number))
            except OSError:
                return False
    return True


@dataclass
class NodeProcess:
    """One ``spegel registry`` subprocess."""

    ip: str
    port: int
    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    metrics_port: int = METRICS_PORT

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    @property
    def metrics_url(self) -> str:
        """Where ``/metrics`` and ``/debug`` are served (``--metrics-addr``)."""
        return f"http://{self.ip}:{self.metrics_port}"

    def start(self) -> NodeProcess:
        command = [sys.executable, "-m", "spegel_core.cli.main", "registry",
                   "--registry-addr", f"{self.ip}:{self.port}",
                   "--router-addr", f"{self.ip}:{self.port + 1}",
                   "--metrics-addr", f"{self.ip}:{self.metrics_port}", *self.args]
        env = {**os.environ, **self.env}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            env=env)
        return self

    def wait_ready(self, timeout: float = 20.0) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"node exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.02)
        raise TimeoutError(f"node {self.url} not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
