"""The simulation's DNS server: dnsmasq without per-query logging.

With ``--log-queries`` dnsmasq writes one line per record of every answer: with
2000 addresses per answer and hundreds of answers a second it would spend its time
logging, and the log would grow by gigabytes. Questions are counted with dnsmasq's
own statistics instead (``SIGUSR1``: "queries answered locally").
"""

from __future__ import annotations

import re
import signal
import time

from spegel_core.testing.dns import DnsServer

_ANSWERED = re.compile(r"queries forwarded (\d+), queries answered locally (\d+)")


class QuietDnsServer(DnsServer):
    """A :class:`DnsServer` that does not log queries but can count them."""

    def _arguments(self) -> list[str]:
        return [arg for arg in super()._arguments() if arg != "--log-queries"]

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
