"""The Go original's cleanup hook: ``cleanup --addr`` and ``cleanup-wait``.

Its chart uninstalls with a post-delete DaemonSet that runs ``spegel cleanup
--addr=:PORT`` (undo the configuration, then answer ``GET /healthz`` with 200 until
stopped) behind a headless Service, and a Pod that runs ``spegel cleanup-wait
--probe-endpoint=<service>:PORT`` (resolve the name, probe every address, succeed after
``--threshold`` rounds in a row where all answered 200, one round per ``--period``).
Both work here the same way, so that chart's hook runs unchanged. This project's own
manifests need neither (``deploy/kubernetes/cleanup`` runs cleanup as an init container).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Callable

from spegel_core.config import Address
from spegel_core.server.listen import listen_socket

log = logging.getLogger(__name__)

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
#: Seconds a probe connection has to send its request line; bytes read of it at most.
_REQUEST_TIMEOUT = 5.0
_MAX_REQUEST = 8192


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        line = await asyncio.wait_for(reader.readline(), _REQUEST_TIMEOUT)
        parts = line[:_MAX_REQUEST].split()
        ok = len(parts) >= 2 and parts[0] == b"GET" and parts[1].split(b"?")[0] == b"/healthz"
        writer.write(_OK if ok else _NOT_FOUND)
        await writer.drain()
    except (TimeoutError, ConnectionError, asyncio.LimitOverrunError, ValueError):
        pass
    finally:
        writer.close()


async def _serve_until_stopped(address: Address, ready: Callable[[], None] | None) -> None:
    sock = listen_socket(address, backlog=64)
    server = await asyncio.start_server(_answer, sock=sock)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    log.info("configuration restored; answering GET /healthz on %s until stopped", address)
    if ready is not None:
        ready()
    async with server:
        await stopped.wait()


def serve_health(address: Address, ready: Callable[[], None] | None = None) -> int:
    """Answer ``GET /healthz`` on ``address`` until SIGTERM/SIGINT; 0, or 1 if it cannot bind."""
    try:
        asyncio.run(_serve_until_stopped(address, ready))
    except OSError as exc:
        log.error("cannot answer probes on %s: %s", address, exc)
        return 1
    return 0


def _probe(host: str, port: int, timeout: float = 1.0) -> bool:
    """Every address ``host`` resolves to answers ``GET /healthz`` with 200."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        log.error("cleanup probe lookup of %s failed: %s", host, exc)
        return False
    addresses = sorted({str(info[4][0]) for info in infos})
    if not addresses:
        return False
    for ip in addresses:
        netloc = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        try:
            with urllib.request.urlopen(f"http://{netloc}/healthz", timeout=timeout) as reply:
                if reply.status != 200:
                    return False
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            log.info("cleanup probe of %s not ready: %s", netloc, exc)
            return False
    log.info("cleanup probe: all %d endpoints ready", len(addresses))
    return True


def wait_for_cleanup(endpoint: str, *, threshold: int, period: float,
                     sleep: Callable[[float], None] | None = None) -> int:
    """Probe ``endpoint`` (``host:port``) until ``threshold`` rounds in a row succeed; 0."""
    import time

    address = Address.parse(endpoint)
    if not address.host:
        raise ValueError(f"--probe-endpoint needs a host: {endpoint!r}")
    pause = sleep or time.sleep
    count = 0
    while True:
        count = count + 1 if _probe(address.host, address.port) else 0
        if count >= threshold:
            log.info("cleanup probe threshold %d reached", threshold)
            return 0
        pause(period)
