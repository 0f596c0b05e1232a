"""``nox -s bench -- tee``: the verified hop's machinery alone, in one process.

A writer thread sends a body into a socket pair, the body moves to a second pair
(``splice_tee``: hashed, by the stream's own thread; or ``splice_sockets``: not hashed,
by the event loop), and a reader thread drains that. CPU seconds per GB are the
process's CPU time less the writer's and the reader's own, so what is left is the loop
plus the stream's threads;
one core's ``hashlib.sha256`` over the same bytes is measured in the same rounds.
No network, no HTTP: what the tap costs on top of the hash and of a plain relay.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import socket
import statistics
import sys
import threading
import time

from spegel_core.server.splice import splice_sockets
from spegel_core.server.tee import HashTap, splice_tee

CHUNK = 64 * 2**20
BUFFERS = 4 * 2**20


def _write(sock: socket.socket, data: memoryview, size: int, cpu: list[float]) -> None:
    started = time.thread_time()
    left = size
    while left:
        n = min(left, len(data))
        sock.sendall(data[:n])
        left -= n
    cpu.append(time.thread_time() - started)


def _read(sock: socket.socket, size: int, cpu: list[float]) -> None:
    started = time.thread_time()
    buffer = bytearray(BUFFERS)
    left = size
    while left:
        n = sock.recv_into(buffer, min(len(buffer), left))
        if not n:
            break
        left -= n
    cpu.append(time.thread_time() - started)


async def _one(data: memoryview, size: int, hashed: bool) -> tuple[float, float]:
    """(GB/s, CPU seconds per GB of the loop and the hashing thread)."""
    peer, source = socket.socketpair()
    destination, client = socket.socketpair()
    sockets = (peer, source, destination, client)
    try:
        for sock in sockets:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFERS)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFERS)
        source.setblocking(False)
        destination.setblocking(False)
        delivered = size - 1 if hashed else size  # the tap holds its last byte back
        writer_cpu: list[float] = []
        reader_cpu: list[float] = []
        writer = threading.Thread(target=_write, args=(peer, data, size, writer_cpu))
        reader = threading.Thread(target=_read, args=(client, delivered, reader_cpu))
        cpu, started = time.process_time(), time.perf_counter()
        writer.start()
        reader.start()
        if hashed:
            tap = HashTap(size, "sha256")
            try:
                await splice_tee(source.fileno(), destination.fileno(), size, tap,
                                 source_timeout=30, destination_timeout=30)
                assert await tap.hexdigest() is not None
            finally:
                tap.close()
        else:
            await splice_sockets(source.fileno(), destination.fileno(), size,
                                 source_timeout=30, destination_timeout=30)
        await asyncio.to_thread(writer.join)
        await asyncio.to_thread(reader.join)
        elapsed = time.perf_counter() - started
        own = time.process_time() - cpu - writer_cpu[0] - reader_cpu[0]
        return size / elapsed / 1e9, own / (size / 1e9)
    finally:
        for sock in sockets:
            sock.close()


def _sha256(data: memoryview) -> tuple[float, float]:
    started, cpu = time.perf_counter(), time.thread_time()
    hashlib.sha256(data).digest()
    elapsed, cpu = time.perf_counter() - started, time.thread_time() - cpu
    return len(data) / elapsed / 1e9, cpu / (len(data) / 1e9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=512, help="Body size per round.")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    size = args.mib * 2**20
    data = memoryview(os.urandom(min(size, CHUNK)))
    results: dict[str, list[tuple[float, float]]] = {"sha256": [], "relay": [], "tee": []}
    for _ in range(args.rounds):
        results["relay"].append(asyncio.run(_one(data, size, hashed=False)))
        results["tee"].append(asyncio.run(_one(data, size, hashed=True)))
        results["sha256"].append(_sha256(data))
    labels = {"sha256": "one core's sha256 (hashlib)",
              "relay": "splice_sockets (not hashed)",
              "tee": "splice_tee (hashed by the tap)"}
    print(f"| {args.mib} MiB, medians of {args.rounds} | GB/s | CPU seconds per GB |")
    print("|---|---:|---:|")
    for key, rows in results.items():
        rate = statistics.median(r[0] for r in rows)
        cost = statistics.median(r[1] for r in rows)
        print(f"| {labels[key]} | {rate:.2f} | {cost:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
