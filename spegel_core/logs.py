"""The one logging configuration point (used by the CLI only)."""

from __future__ import annotations

import json
import logging
import sys
import time

from spegel_core.errors import PeerError


class AbortedResponseFilter(logging.Filter):
    """Drop the server's traceback of a response cut off on purpose.

    When a peer's bytes fail verification mid-stream the response is aborted by raising
    :class:`~spegel_core.errors.PeerError` out of it (the client sees a short read, never
    a complete 200). The mirror's error handler logs that as one warning line; the
    server's "Exception in ASGI application" with a traceback would only repeat it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Reject records whose exception is a :class:`~spegel_core.errors.PeerError`."""
        error = record.exc_info[1] if record.exc_info else None
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        return not isinstance(error, PeerError)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC), ``level``, ``logger``, ``msg`` and ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Send every log record to stderr, as text or one JSON object a line.

    Replaces the root logger's handlers, routes uvicorn's loggers through it, drops
    the tracebacks of deliberately aborted responses, and keeps uvicorn's access log
    at WARNING or above.

    :param level: the root level (``DEBUG``, ``INFO``, ``WARNING``, ``ERROR``).
    :param fmt: ``"text"`` or ``"json"``.
    """
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    if not any(isinstance(f, AbortedResponseFilter) for f in logging.getLogger("uvicorn.error")
               .filters):
        logging.getLogger("uvicorn.error").addFilter(AbortedResponseFilter())
    logging.getLogger("uvicorn.access").setLevel(max(logging.getLevelName(level), logging.WARNING))
