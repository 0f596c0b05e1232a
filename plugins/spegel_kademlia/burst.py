"""The DHT socket under a burst: a wide receive buffer, and datagrams read in batches.

Single flight sends a fleet's claims to one node in the same second (2000 claims within
a second at 2000 nodes). Two limits of a plain asyncio datagram endpoint then decide
the claims' round trip, not the work of answering them:

- the kernel's default receive buffer (~208 KiB, ~160 small datagrams on loopback)
  overflows during a 100 ms pause of the event loop, and a dropped claim is re-sent
  only after its attempt timeout;
- the event loop reads a few datagrams from a socket per turn (asyncio one, uvloop up
  to 32), so a socket that receives far more than others queues in the kernel while
  the loop serves everything else in the process.

:class:`BurstProtocol` widens the buffer and, after each datagram the loop hands over
during a burst, reads what else is already waiting (up to :data:`BATCH`) without
waiting.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any

from spegel_kademlia.rpc import RpcEndpoint, UdpProtocol

log = logging.getLogger(__name__)

__all__ = ["BATCH", "BURST_GAP", "RECEIVE_BUFFER", "BurstProtocol", "widen_receive_buffer"]

#: Receive buffer asked for the DHT socket (the kernel caps it at ``net.core.rmem_max``).
RECEIVE_BUFFER = 4 * 1024 * 1024
#: Datagrams read at most after each one the event loop hands over.
BATCH = 64
#: Datagrams closer together than this (seconds) are a burst: the socket is drained.
BURST_GAP = 0.002
#: Largest datagram read (the codec refuses anything larger than it sends).
_MAX_DATAGRAM = 65535


def widen_receive_buffer(sock: Any, size: int = RECEIVE_BUFFER) -> int:
    """Ask for a receive buffer of ``size`` bytes on ``sock`` (never shrinks it).

    :param sock: the bound UDP socket, or the transport's view of it (None: nothing).
    :param size: bytes wanted.
    :returns: the buffer the kernel granted (0 if it could not be read).
    """
    if sock is None:
        return 0
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < size:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    except (OSError, AttributeError) as exc:
        log.debug("cannot widen the receive buffer: %s", exc)
        return 0


class BurstProtocol(UdpProtocol):
    """A :class:`~spegel_kademlia.rpc.UdpProtocol` that drains its socket in batches.

    It reads through a duplicate of the transport's descriptor (non-blocking reads of
    the same socket, closed with the transport), so it works with asyncio's and
    uvloop's transports alike; without one it behaves as its base class.

    :param endpoint: receives every datagram.
    :param batch: datagrams read at most after each one the event loop hands over.
    :param receive_buffer: receive buffer asked for (bytes).
    """

    def __init__(self, endpoint: RpcEndpoint, *, batch: int = BATCH,
                 receive_buffer: int = RECEIVE_BUFFER) -> None:
        super().__init__(endpoint)
        self._endpoint_ref = endpoint
        self._batch = max(0, batch)
        self._wanted_buffer = receive_buffer
        self._sock: socket.socket | None = None
        self._draining = False
        self._last = -1.0
        #: The receive buffer the kernel granted; datagrams read in batches.
        self.receive_buffer = 0
        self.drained = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Hand the transport on; widen the buffer and open the reading duplicate."""
        super().connection_made(transport)
        view = transport.get_extra_info("socket")
        self.receive_buffer = widen_receive_buffer(view, self._wanted_buffer)
        if view is None or self._batch == 0:
            return
        try:
            self._sock = socket.socket(view.family, view.type, view.proto,
                                       fileno=os.dup(view.fileno()))
        except (OSError, ValueError, AttributeError) as exc:
            log.debug("datagrams are read one loop turn at a time: %s", exc)
            self._sock = None

    def connection_lost(self, exc: Exception | None) -> None:
        """Close the reading duplicate with the transport."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        """Hand the datagram on, then what else waits (up to the batch).

        Only during a burst (the datagram before came less than :data:`BURST_GAP` s
        earlier): otherwise the extra read would almost always find nothing, and cost a
        system call and an exception on every datagram of a quiet node.
        """
        super().datagram_received(data, addr)
        now = time.monotonic()
        last, self._last = self._last, now
        if self._draining or self._sock is None or now - last > BURST_GAP:
            return
        self._draining = True
        try:
            for _ in range(self._batch):
                if self._sock is None or self._endpoint_ref.closed:
                    return
                try:
                    data, addr = self._sock.recvfrom(_MAX_DATAGRAM, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    self.error_received(exc)
                    return
                self.drained += 1
                super().datagram_received(data, addr)
        finally:
            self._draining = False

    def __repr__(self) -> str:
        return (f"<BurstProtocol buffer={self.receive_buffer} batch={self._batch} "
                f"drained={self.drained}>")
