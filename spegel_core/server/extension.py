"""The ASGI extension our server offers applications: zero-copy responses.

Public: an application (the mirror) or middleware (the Prometheus plugin's HTTP
metrics) may use these names. When ``scope["extensions"]`` holds
:data:`ZEROCOPY_EXTENSION`, the application may send one :data:`ZEROCOPY_MESSAGE`
instead of ``http.response.body`` messages:

- ``{"type": ZEROCOPY_MESSAGE, "file": fd, "offset": n, "count": n}``: the server
  sends ``count`` bytes of the open file ``fd`` from ``offset`` with ``sendfile``;
- ``{"type": ZEROCOPY_MESSAGE, "socket": fd, "count": n, ...}``: the server splices
  ``count`` bytes from another socket (a peer's response) to the client.

Under any other ASGI server the extension is absent and responses fall back to
ordinary body messages.
"""

from __future__ import annotations

__all__ = ["ZEROCOPY_EXTENSION", "ZEROCOPY_MESSAGE"]

#: The key in ``scope["extensions"]`` that says the server takes zero-copy messages.
ZEROCOPY_EXTENSION = "spegel.zerocopy"
#: The ASGI message type of a zero-copy response body.
ZEROCOPY_MESSAGE = "http.response.zerocopy"
