"""Fan-out of :class:`~spegel_core.protocols.StoreEvent` to every subscriber of a store.

Content stores use :class:`EventHub` to implement ``ContentStore.subscribe``:
each call gets its own :class:`EventStream` that sees every event published
after it was made, and that ends when the hub is closed. A subscriber that does
not keep up never blocks the store: past ``max_pending`` queued events its
backlog is replaced by one ``RESYNC`` event (list everything again).
"""

from __future__ import annotations

import asyncio
import logging

from spegel_core.protocols import StoreEvent, StoreEventKind

log = logging.getLogger(__name__)

__all__ = ["EventHub", "EventStream"]

_RESYNC = StoreEvent(StoreEventKind.RESYNC)


class EventStream:
    """One subscriber's events, as an async iterator; ends when the hub closes."""

    def __init__(self, hub: EventHub, max_pending: int) -> None:
        self._hub = hub
        self._queue: asyncio.Queue[StoreEvent | None] = asyncio.Queue()
        self._max_pending = max_pending
        self._done = False
        self.dropped = 0

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> StoreEvent:
        if self._done:
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            self._finish()
            raise StopAsyncIteration
        return event

    def _push(self, event: StoreEvent | None) -> None:
        if self._done:
            return
        if event is not None and self._queue.qsize() >= self._max_pending:
            self.dropped += self._queue.qsize()
            while not self._queue.empty():
                self._queue.get_nowait()
            log.warning("store event subscriber fell %d events behind; sending RESYNC",
                        self._max_pending)
            event = _RESYNC
        self._queue.put_nowait(event)

    def _finish(self) -> None:
        self._done = True
        self._hub._discard(self)

    async def aclose(self) -> None:
        """Stop receiving events (the iterator ends)."""
        self._finish()

    def __repr__(self) -> str:
        state = "done" if self._done else "open"
        return f"<EventStream {state} pending={self._queue.qsize()} dropped={self.dropped}>"


class EventHub:
    """Publishes store events to every open :class:`EventStream`."""

    def __init__(self, *, max_pending: int = 10_000) -> None:
        self._streams: list[EventStream] = []
        self._max_pending = max_pending
        self.closed = False

    def subscribe(self) -> EventStream:
        """A new stream of the events published from now on (already ended if closed)."""
        stream = EventStream(self, self._max_pending)
        if self.closed:
            stream._push(None)
        else:
            self._streams.append(stream)
        return stream

    def publish(self, event: StoreEvent) -> None:
        """Queue ``event`` for every subscriber; never blocks."""
        for stream in list(self._streams):
            stream._push(event)

    def close(self) -> None:
        """End every stream (after the events already queued); idempotent."""
        self.closed = True
        for stream in list(self._streams):
            stream._push(None)
        self._streams.clear()

    def _discard(self, stream: EventStream) -> None:
        if stream in self._streams:
            self._streams.remove(stream)

    @property
    def subscribers(self) -> int:
        """How many streams are subscribed."""
        return len(self._streams)

    def __repr__(self) -> str:
        return f"<EventHub subscribers={len(self._streams)} closed={self.closed}>"
