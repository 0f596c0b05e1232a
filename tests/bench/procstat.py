"""CPU time and RSS of a process, from /proc."""

from __future__ import annotations

import os
import threading


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of ``pid``, in seconds, threads that have ended included.

    From ``/proc/<pid>/stat`` (clock ticks): the verified peer hop hashes in a thread per
    stream, and a per-thread sum (``task/*/schedstat``) would lose the time of every
    thread that ended between two samples.
    """
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


class PeakRss:
    """Samples RSS every 20 ms in a thread while the block runs."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            self._stop.wait(0.02)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
