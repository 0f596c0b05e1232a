"""A throttled upstream link: an asyncio TCP proxy with one token bucket for all connections.

Put it in front of :class:`~spegel_core.localcluster.upstream.UpstreamRegistry` and point
clients at it instead: every byte the registry sends back goes through one shared
bucket (``rate`` bytes per second), as through a cluster's NAT, and is counted, so
a test can tell how many copies of a layer crossed the upstream link.

It runs its own event loop in a thread, so synchronous tests (``ctr`` subprocesses)
and async ones can both use it::

    with ThrottledProxy(upstream.host, upstream.port, rate=16_000_000) as proxy:
        ...pull through proxy.address...
        assert proxy.bytes_down < 1.25 * layer_size
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from dataclasses import dataclass, field

__all__ = ["ThrottledProxy", "TokenBucket"]

#: Largest piece sent at once (the bucket's granularity).
CHUNK = 64 * 1024


@dataclass
class TokenBucket:
    """``rate`` bytes per second, bursts up to ``burst`` bytes; shared by every caller."""

    rate: float
    burst: float = CHUNK * 4
    _tokens: float = field(default=0.0, init=False)
    _stamp: float = field(default_factory=time.monotonic, init=False)
    _lock: asyncio.Lock | None = field(default=None, init=False)

    async def take(self, count: int) -> None:
        """Wait until ``count`` bytes may pass (callers are served in turn)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= count:
                    self._tokens -= count
                    return
                await asyncio.sleep((count - self._tokens) / self.rate)


#: An HTTP/1 request line (what :attr:`ThrottledProxy.requests` records).
_REQUEST_LINE = re.compile(
    rb"(?m)^(?:GET|HEAD|POST|PUT|PATCH|DELETE) [^ \r\n]+ HTTP/1\.[01](?=\r$)")


class ThrottledProxy:
    """A TCP proxy to ``target_host:target_port`` on ``host:port`` (0: a free port).

    :param target_host: where the registry listens.
    :param target_port: its port.
    :param rate: bytes per second from the registry to all clients together.
    :param host: loopback address to listen on.
    :param port: port to listen on (0 picks a free one).
    :param source: local address to connect to the target from (a client's own node
        address, as a node's containerd has in a cluster); None: the kernel's choice.
    :param refuse: a connection whose client sends these bytes (e.g. a blob's path in a
        request line) is reset: an upstream that refuses that request.

    :attr:`bytes_down` counts bytes forwarded from the registry to clients,
    :attr:`bytes_up` the other way, :attr:`connections` connections accepted, and
    :attr:`requests` the request lines clients sent (``GET /v2/... HTTP/1.1``; a line
    split across two reads is missed, which a client writing each request head at once
    never does).
    """

    def __init__(self, target_host: str, target_port: int, rate: float, *,
                 host: str = "127.0.0.1", port: int = 0, source: str | None = None,
                 refuse: bytes | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.target_host = target_host
        self.target_port = target_port
        self.rate = rate
        self.host = host
        self.port = port
        self.source = source
        self.refuse = refuse
        #: Connections reset because of ``refuse``.
        self.refused = 0
        self.bytes_down = 0
        self.bytes_up = 0
        #: Request lines seen going upstream, in order.
        self.requests: list[str] = []
        self.connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._bucket = TokenBucket(rate)
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._stopped: asyncio.Event | None = None

    @property
    def address(self) -> str:
        """``host:port`` the proxy listens on."""
        return f"{self.host}:{self.port}"

    def reset(self) -> None:
        """Zero the counters (between two measured runs)."""
        self.bytes_down = self.bytes_up = self.connections = 0
        self.requests.clear()

    def start(self, timeout: float = 10.0) -> ThrottledProxy:
        """Listen (in a background thread) and return once connections are accepted."""
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve(ready))
            except BaseException as exc:  # reported to start()
                errors.append(exc)
                ready.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"throttled-proxy {self.rate:.0f}B/s",
                                        daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or errors:
            raise RuntimeError(f"throttled proxy did not start: {errors}")
        return self

    async def _serve(self, ready: threading.Event) -> None:
        self._stopped = asyncio.Event()
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        ready.set()
        await self._stopped.wait()
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        await self._server.wait_closed()

    async def _handle(self, client_reader: asyncio.StreamReader,
                      client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.target_host, self.target_port,
                local_addr=(self.source, 0) if self.source else None)
        except OSError:
            client_writer.close()
            self._tasks.discard(task)
            return
        self._writers.update((client_writer, upstream_writer))
        try:
            await asyncio.gather(
                self._pipe(client_reader, upstream_writer, down=False),
                self._pipe(upstream_reader, client_writer, down=True))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for writer in (client_writer, upstream_writer):
                writer.close()
                self._writers.discard(writer)
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                    down: bool) -> None:
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                if down:
                    await self._bucket.take(len(data))
                    self.bytes_down += len(data)
                else:
                    if self.refuse is not None and self.refuse in data:
                        self.refused += 1
                        raise ConnectionResetError("refused")
                    self.bytes_up += len(data)
                    self.requests.extend(m.group(0).decode("latin-1")
                                         for m in _REQUEST_LINE.finditer(data))
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                if writer.can_write_eof():
                    writer.write_eof()
            if down:
                writer.close()

    def cut(self) -> None:
        """Reset every open connection (a transfer fails mid-way); new ones are accepted."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        done = threading.Event()

        def reset() -> None:
            for writer in list(self._writers):
                transport = writer.transport
                if isinstance(transport, asyncio.Transport):
                    transport.abort()
            done.set()

        loop.call_soon_threadsafe(reset)
        done.wait(10)

    def stop(self) -> None:
        """Close every connection and the listener; idempotent."""
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopped.set)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> ThrottledProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (f"<ThrottledProxy {self.address} -> {self.target_host}:{self.target_port} "
                f"{self.rate:.0f}B/s down={self.bytes_down} conns={self.connections}>")
