"""Socket to socket in the kernel, hashed on the way: ``splice(2)`` plus ``tee(2)``.

The verified peer hop (``--peer-blob-verify mirror``) moves a blob's body from the
peer's socket to the client's socket without it entering Python, and still hashes
every byte. Two pipes per stream, driven by one worker thread with blocking calls::

    peer socket --splice--> in --tee--> hash --read--> reused buffer --> hashlib
                            in --splice--> client socket

Each turn of the thread fills ``in`` (at most a pipeful: :data:`STREAM_PIPE_SIZE`),
duplicates all of it into the empty ``hash`` pipe with ``tee`` (page references, no
copy; ``hash`` has the same capacity, so one ``tee`` takes all), splices it on to the
client, then reads ``hash`` into one reused buffer and feeds the hash object
(``hashlib`` releases the GIL on large updates): the one copy into user space is the
one the hash needs. Both pipes are empty again at the end of each turn. The thread
waits with ``poll(2)`` on whichever socket holds it up (and on a stop event); the
event loop awaits one future per source, never a wake-up per pipeful: handing every
pipeful between the loop and a hashing thread was what kept the earlier design of this
module at half the hash's rate.

While fewer verified streams run than the process has cores
(:data:`~spegel_core.server.tee_stream.HASH_THREAD_BELOW`), a stream hashes in a
second thread instead: the mover hands it each turn's byte count and waits only until
it has read ``hash`` empty, so the hash of one pipeful overlaps the moves of the next
(for a lone stream: level with hashing in turn on a quiet machine, ahead when other
jobs load it, 0.05-0.07 CPU-s/GB dearer; with more streams than cores every core is busy
anyway and a stream hashes in turn, the cheapest way: docs/benchmarks.md). The thread
is in :mod:`spegel_core.server.tee_stream`, the tap in :mod:`spegel_core.server.tee_tap`.

The last :attr:`HashTap.hold` bytes of the body are never spliced: the thread reads
them out of ``in`` and keeps them until the caller has compared the digest
(:meth:`HashTap.hexdigest`) and takes them (:meth:`HashTap.held`) to send, so a body
whose digest does not match is never completed. A tap lives across sources: when a
peer stops short the caller resumes from another provider at :attr:`HashTap.taken`
and calls :func:`splice_tee` again with the new socket; the hash goes on where it
stopped.

``os`` has ``splice`` (Python 3.10+) but not ``tee``: it is called from libc
through ``ctypes`` (:data:`AVAILABLE` says whether both exist). Where they do not,
the mirror streams verified bodies through Python as before.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading

from spegel_core.server.splice import AVAILABLE as SPLICE_AVAILABLE
from spegel_core.server.splice import SpliceResult
from spegel_core.server.tee_stream import TEE_AVAILABLE, TeeStream
from spegel_core.server.tee_stream import tee as tee
from spegel_core.server.tee_tap import STREAM_PIPE_SIZE as STREAM_PIPE_SIZE
from spegel_core.server.tee_tap import HashTap as HashTap

#: Whether this platform can hash a spliced stream (``os.splice``, libc's ``tee``, eventfd).
AVAILABLE = SPLICE_AVAILABLE and TEE_AVAILABLE and hasattr(os, "eventfd")

log = logging.getLogger(__name__)


async def splice_tee(source_fd: int, destination_fd: int, count: int, tap: HashTap, *,
                     source_timeout: float, destination_timeout: float) -> SpliceResult:
    """Take ``count`` bytes (the tap's fed bytes, then ``source_fd``) through ``tap``.

    Every byte taken is hashed and sent on to ``destination_fd``, except the body's
    last ``tap.hold`` bytes, which stay in the tap. ``source_fd`` -1 means no socket
    (the fed bytes are all there is). Both sockets must be non-blocking. The stream
    runs in a thread of its own; this waits for it once. ``moved`` counts bytes the
    destination accepted in this call; the stop says why it returned, as
    :func:`~spegel_core.server.splice.splice_sockets` does.

    :raises RuntimeError: the tap is closed or already running a stream.
    """
    loop = asyncio.get_running_loop()
    tap._begin()
    future: asyncio.Future[SpliceResult] = loop.create_future()
    stream = TeeStream(tap, source_fd, destination_fd, count, source_timeout,
                       destination_timeout)
    thread = threading.Thread(target=stream.run, args=(loop, future), name="spegel-tee",
                              daemon=True)
    try:
        thread.start()
    except BaseException:
        tap._end()
        raise
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        # The descriptors are the caller's, closed once this returns: the thread must
        # be gone by then. It answers the stop event within one turn.
        tap._stop_requested()
        thread.join()
        raise
