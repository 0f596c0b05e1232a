"""The simulation's DNS server: dnsmasq without per-query logging, updated incrementally.

With ``--log-queries`` dnsmasq writes one line per record of every answer: with
2000 addresses per answer and hundreds of answers a second it would spend its time
logging, and the log would grow by gigabytes. Questions are counted with dnsmasq's
own statistics instead (``SIGUSR1``: "queries answered locally").

Records are published through ``--hostsdir``: each batch of newly started nodes is
a new small file that dnsmasq reads on its own (inotify), and a batch that loses
nodes is rewritten. The whole list is never re-read. Re-reading one hosts file of
all N addresses on every change (SIGHUP) blocked dnsmasq for most of each 50 ms
publishing interval while nodes joined: DNS p99 went from 5 to 55 ms at 1000 nodes
with the server otherwise idle, a cost of this test server that a cluster's DNS
(CoreDNS serves from its cache while endpoints change) does not have.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterable
from pathlib import Path

from spegel_core.testing.dns import DnsServer

_ANSWERED = re.compile(r"queries forwarded (\d+), queries answered locally (\d+)")


class QuietDnsServer(DnsServer):
    """A :class:`DnsServer` that does not log queries, can count them, and publishes one
    name's addresses incrementally (:meth:`publish`)."""

    def __init__(self, workdir: Path, **kwargs: object) -> None:
        super().__init__(workdir, **kwargs)  # type: ignore[arg-type]
        self.hosts_dir = self.workdir / "hosts.d"
        self._staging = self.workdir / "hosts.staging"
        self._batches: dict[int, list[str]] = {}
        self._batch_of: dict[str, int] = {}
        self._name = ""

    def arguments(self) -> list[str]:
        """dnsmasq's command line without query logging, names from the hosts directory.

        :returns: the program and its arguments.
        """
        args = [arg for arg in super().arguments() if arg != "--log-queries"]
        return [f"--hostsdir={self.hosts_dir}" if arg.startswith("--addn-hosts=") else arg
                for arg in args]

    def start(self, timeout: float = 10.0) -> DnsServer:
        """Start dnsmasq on an empty hosts directory (one empty batch file)."""
        self.hosts_dir.mkdir(parents=True, exist_ok=True)
        self._write_batch(0, [])
        return super().start(timeout)

    def _reads(self) -> int:
        return self.log().count(f"read {self.hosts_dir}/")

    def publish(self, name: str, addresses: Iterable[str], timeout: float = 5.0) -> None:
        """Make ``name`` resolve to exactly ``addresses``; waits until dnsmasq has read it.

        New addresses go into one new file; files holding addresses that left are
        rewritten without them.
        """
        if name != self._name:
            if self._batch_of:
                raise ValueError("publish() serves one name")
            self._name = name
        wanted = list(dict.fromkeys(addresses))
        keep = set(wanted)
        touched = {self._batch_of.pop(a) for a in list(self._batch_of) if a not in keep}
        for index in touched:
            self._batches[index] = [a for a in self._batches[index] if a in keep]
        new = [a for a in wanted if a not in self._batch_of]
        if new:
            index = max(self._batches, default=0) + 1
            self._batches[index] = new
            self._batch_of.update(dict.fromkeys(new, index))
            touched.add(index)
        if not touched:
            return
        before = self._reads()
        for index in sorted(touched):
            self._write_batch(index, self._batches[index])
        deadline = time.monotonic() + timeout
        while self._reads() < before + len(touched):
            if time.monotonic() > deadline:
                raise RuntimeError(f"dnsmasq did not read {len(touched)} hosts files within "
                                   f"{timeout}s:\n{self.log()[-2000:]}")
            time.sleep(0.002)

    def _write_batch(self, index: int, addresses: list[str]) -> None:
        # Written outside the watched directory, then renamed in: dnsmasq reads every
        # file that appears there, a half-written temporary one included.
        self._staging.mkdir(parents=True, exist_ok=True)
        temporary = self._staging / f"batch-{index:06d}"
        temporary.write_text("".join(f"{a} {self._name}\n" for a in addresses))
        temporary.replace(self.hosts_dir / f"batch-{index:06d}")

    def questions_answered(self, timeout: float = 5.0) -> int | None:
        """Questions dnsmasq answered from its records so far (None if it will not say)."""
        process = self._process
        if process is None or process.poll() is not None:
            return None
        before = len(_ANSWERED.findall(self.log()))
        process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = _ANSWERED.findall(self.log())
            if len(found) > before:
                return int(found[-1][1])
            time.sleep(0.01)
        return None
