"""A ``spegel registry`` subprocess on a chosen address: started, awaited ready, stopped.

Public, so that tools (``spegel demo``, benchmarks, the test kit) run real nodes the
same way; free loopback addresses for them come from :mod:`spegel_core.localcluster.loopback`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["METRICS_PORT", "NodeProcess"]

#: The default metrics port of a node (each node has its own address, as in a cluster).
METRICS_PORT = 9090


def terminate(process: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM ``process``, SIGKILL it after ``timeout`` s; its exit code once it ended.

    :param process: a child process (already ended is fine).
    :param timeout: seconds between SIGTERM and SIGKILL.
    :returns: the exit code.
    """
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@dataclass
class NodeProcess:
    """One ``spegel registry`` subprocess listening on ``ip``.

    The mirror listens on ``ip:port``, the router on ``ip:port+1`` and metrics on
    ``ip:metrics_port``; ``args`` are further flags. Output goes to ``log_path``.
    """

    ip: str
    port: int
    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    metrics_port: int = METRICS_PORT

    @property
    def url(self) -> str:
        """The base URL of the node's mirror (``--registry-addr``)."""
        return f"http://{self.ip}:{self.port}"

    @property
    def metrics_url(self) -> str:
        """Where ``/metrics`` and ``/debug`` are served (``--metrics-addr``)."""
        return f"http://{self.ip}:{self.metrics_port}"

    def start(self) -> NodeProcess:
        """Start ``python -m spegel_core.cli.main registry`` with the addresses and ``args``."""
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
        """Poll ``/readyz`` until 200; returns the seconds it took.

        :raises RuntimeError: the process exited (its log tail is in the message).
        :raises TimeoutError: not ready within ``timeout`` seconds.
        """
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
        """The last 4000 characters of the node's output."""
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` s; the exit code (None: never started)."""
        if self.process is None:
            return None
        return terminate(self.process, timeout)

    def kill(self) -> None:
        """SIGKILL the process if it runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
