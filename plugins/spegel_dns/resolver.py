"""One round of DNS questions with aiodns, answers classified instead of raised.

Every round uses a fresh resolver (c-ares channel): c-ares caches answers for
their TTL, so a long-lived channel could keep handing out records that changed
since. A round costs one channel, which is cheap next to the 30-minute refresh.
"""

from __future__ import annotations

import asyncio
import enum
import socket
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiodns
import pycares

__all__ = ["Outcome", "QueryAnswer", "Resolver"]


class Outcome(enum.Enum):
    """How one DNS question ended."""

    OK = "ok"
    #: The name exists but has no record of this type.
    NODATA = "nodata"
    NXDOMAIN = "nxdomain"
    TIMEOUT = "timeout"
    #: Server down or refusing, a malformed or truncated answer that could not be retried.
    ERROR = "error"


_NOT_FOUND = {pycares.errno.ARES_ENOTFOUND}
_NO_DATA = {pycares.errno.ARES_ENODATA}
_TIMEOUT = {pycares.errno.ARES_ETIMEOUT}


@dataclass(slots=True)
class QueryAnswer:
    """The records of one question (type ``qtype`` for ``name``) and how it went."""

    name: str
    qtype: str
    outcome: Outcome
    #: IP addresses (A/AAAA) or ``(target, port)`` pairs (SRV), in answer order.
    addresses: list[str] = field(default_factory=list)
    services: list[tuple[str, int]] = field(default_factory=list)
    #: Addresses of other names given in the additional section (SRV targets).
    additional: dict[str, list[str]] = field(default_factory=dict)
    detail: str = ""

    @property
    def maybe_truncated(self) -> bool:
        """Whether a UDP answer this size could have been cut short to fit 512 bytes.

        Every DNS server sends at least 512 bytes over UDP; an answer with room for
        one more record below that was not truncated. (Estimated with compressed
        owner names: 16 bytes per A record, 28 per AAAA, plus header, question and
        room for an EDNS0 record.)
        """
        per_record = 16 if self.qtype == "A" else 28
        size = 12 + len(self.name) + 2 + 4 + 11 + per_record * (len(self.addresses)
                                                                  + len(self.services))
        return self.qtype not in ("A", "AAAA") or size + per_record > 512

    @property
    def answered(self) -> bool:
        """The server gave an authoritative answer (records, or none of this type)."""
        return self.outcome in (Outcome.OK, Outcome.NODATA)


class _LoopDNSResolver(aiodns.DNSResolver):
    """aiodns's resolver with its c-ares channel driven by this event loop, not a thread.

    aiodns 4 gives every channel its own c-ares event thread, and answers cross over
    with ``call_soon_threadsafe``. A :class:`Resolver` lives for one round of two
    questions, so each round started and stopped a thread: 0.25 ms more CPU per
    resolution, 4 % of a node's join (``python -m tests.scale.joincost --dns``: 6.75
    against 6.5 ms per join).
    aiodns's own fallback path watches c-ares's sockets with ``loop.add_reader``
    instead; this takes that path always. It builds on two internals of aiodns 4
    (``_make_channel``, ``_sock_state_cb``); :data:`LOOP_DRIVEN` is False, and the
    plain resolver is used, if they are not there.
    """

    def _make_channel(self, **kwargs: Any) -> tuple[bool, pycares.Channel]:
        ref = weakref.ref(self)

        def sock_state(fd: int, readable: bool, writable: bool) -> None:
            resolver = ref()  # weak: the channel must not keep its resolver alive
            if resolver is not None:
                resolver._sock_state_cb(fd, readable, writable)

        return False, pycares.Channel(sock_state_cb=sock_state, timeout=self._timeout,
                                      **kwargs)


#: Whether resolvers run on the event loop (see :class:`_LoopDNSResolver`).
LOOP_DRIVEN = all(callable(getattr(aiodns.DNSResolver, name, None))
                  for name in ("_make_channel", "_sock_state_cb"))
_DNSResolver = _LoopDNSResolver if LOOP_DRIVEN else aiodns.DNSResolver


class Resolver:
    """A fresh aiodns resolver for one round of questions; close it with :meth:`aclose`.

    :param nameservers: ``"IP:PORT"`` / ``"[IPV6]:PORT"`` strings; empty for the
        system's (``/etc/resolv.conf``).
    :param timeout: seconds c-ares waits for one try before retrying.
    :param tries: attempts per question and server.
    :param udp_only: one UDP answer per question, truncated or not (never TCP).
    """

    def __init__(self, nameservers: Sequence[str] = (), *, timeout: float = 1.0,
                 tries: int = 2, udp_only: bool = False) -> None:
        # udp_only: a classic 512-byte answer (~29 A records) kept as it is, truncated
        # or not, instead of asked again over TCP for all of it. Not EDNS0's 1232 bytes
        # (~74 records): a node needs 5 seeds, and pycares turns every record into
        # Python objects (dropping EDNS0 cut a join's CPU by 7 %, docs/scale.md).
        flags = pycares.ARES_FLAG_IGNTC if udp_only else 0
        self._resolver = _DNSResolver(nameservers=list(nameservers) or None,
                                      timeout=timeout, tries=tries, flags=flags)
        self._closed = False

    async def query(self, name: str, qtype: str) -> QueryAnswer:
        """Ask for ``qtype`` (A, AAAA or SRV) records of ``name``; never raises a DNS error."""
        if self._closed:
            return QueryAnswer(name, qtype, Outcome.ERROR, detail="resolver closed")
        try:
            result = await self._resolver.query_dns(name, qtype)
        except RuntimeError as exc:  # the channel was destroyed under us (closing)
            return QueryAnswer(name, qtype, Outcome.ERROR, detail=str(exc))
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closed and task is not None and not task.cancelling():
                # aclose() cancelled the channel's questions, not our caller.
                return QueryAnswer(name, qtype, Outcome.ERROR, detail="resolver closed")
            raise
        except aiodns.error.DNSError as exc:
            code = exc.args[0] if exc.args else None
            detail = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
            if code in _NOT_FOUND:
                outcome = Outcome.NXDOMAIN
            elif code in _NO_DATA:
                outcome = Outcome.NODATA
            elif code in _TIMEOUT:
                outcome = Outcome.TIMEOUT
            else:
                outcome = Outcome.ERROR
            return QueryAnswer(name, qtype, outcome, detail=detail)
        answer = QueryAnswer(name, qtype, Outcome.OK)
        for record in result.answer:
            data = record.data
            if isinstance(data, pycares.ARecordData | pycares.AAAARecordData):
                if _is_ip(data.addr):
                    answer.addresses.append(data.addr)
            elif isinstance(data, pycares.SRVRecordData) and data.port:
                answer.services.append((_name(data.target), data.port))
        for record in result.additional:
            data = record.data
            if isinstance(data, pycares.ARecordData | pycares.AAAARecordData) \
                    and _is_ip(data.addr):
                answer.additional.setdefault(_name(record.name), []).append(data.addr)
        if not answer.addresses and not answer.services:
            answer.outcome = Outcome.NODATA  # e.g. only a CNAME to a name without addresses
        return answer

    async def addresses(self, name: str) -> tuple[list[str], list[QueryAnswer]]:
        """A and AAAA records of ``name``, asked concurrently: (addresses, both answers)."""
        answers = await asyncio.gather(self.query(name, "A"), self.query(name, "AAAA"))
        return [ip for answer in answers for ip in answer.addresses], list(answers)

    async def aclose(self) -> None:
        """Cancel what is in flight and release the channel; safe to call twice."""
        if not self._closed:
            self._closed = True
            await self._resolver.close()

    async def __aenter__(self) -> Resolver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.shield(self.aclose())


def _name(value: str) -> str:
    return value.lower().rstrip(".")


def _is_ip(value: str) -> bool:
    """Whether ``value`` is an IPv4 or IPv6 address in canonical-enough text.

    ``inet_pton`` is as strict as ``ipaddress.ip_address`` here (no leading zeros, no
    zone) and ~30 times cheaper: an answer lists dozens of them, per node joining.
    """
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in value else socket.AF_INET, value)
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return False
    return True
