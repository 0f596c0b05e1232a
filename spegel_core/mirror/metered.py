"""Accounting for a response when it has finished, not when it is built.

:class:`MeteredResponse` wraps the response a route returns and watches the ASGI
messages it sends: the body bytes (plain, zero-copy from a file, spliced from a
peer's socket) and whether the body was completed. Only then does it call back, so
a response that a client abandons, or that is cut off because a peer failed, never
counts as served, and its duration is the time until its last byte.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from spegel_core.mirror.responses import ZEROCOPY_MESSAGE
from spegel_core.server.splice import SpliceReport, Stop


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a response ended: its status, the body bytes sent, and whether it completed."""

    status: int
    sent: int
    complete: bool
    duration_s: float


class MeteredResponse(Response):
    """``inner``, sent unchanged; ``on_done(outcome)`` once it has finished or failed.

    :param inner: the response to send.
    :param started: ``time.perf_counter()`` when the request arrived.
    :param on_done: called exactly once, after the last message (or the failure).
    """

    def __init__(self, inner: Response, started: float,
                 on_done: Callable[[Outcome], None]) -> None:
        # Not Response.__init__: the inner response owns the body and the headers.
        self.inner = inner
        self.started = started
        self.on_done = on_done
        self.status_code = inner.status_code
        self.raw_headers = inner.raw_headers
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send ``inner``, counting the body bytes that left, then call ``on_done``."""
        status = self.inner.status_code
        sent = 0
        complete = False

        async def metered(message: Message) -> None:
            nonlocal status, sent, complete
            kind = message["type"]
            if kind == "http.response.start":
                status = int(message["status"])
            elif kind == "http.response.body":
                await send(message)
                sent += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                return
            elif kind == ZEROCOPY_MESSAGE and message.get("abort"):
                await send(message)  # the source failed mid-body: the connection is cut
                complete = False
                return
            elif kind == ZEROCOPY_MESSAGE:
                report = message.get("report")
                if not isinstance(report, SpliceReport):
                    report = SpliceReport()
                    message = {**message, "report": report}
                await send(message)
                if report.stop is None and "socket" not in message:
                    # A server that does not report a file send: it returned, so done.
                    report.moved, report.stop = int(message["count"]), Stop.DONE
                sent += report.moved
                # Without more_body the server itself sent the end of the body.
                complete = report.stop is Stop.DONE and not message.get("more_body", False)
                return
            await send(message)

        try:
            await self.inner(scope, receive, metered)
        finally:
            self.on_done(Outcome(status, sent, complete, time.perf_counter() - self.started))
        if self.background is not None:  # FastAPI may attach a route's background tasks
            await self.background()
