"""Asking providers in turn, with a hedged request when one is slow.

The first good answer wins. A penalised provider comes last and is never asked as
company for a slow one, only when nothing else is in flight
(:mod:`spegel_core.mirror.penalties` has the rules).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, TypeVar

from spegel_core.errors import PeerError
from spegel_core.protocols import Peer

T = TypeVar("T")


class HedgeSettings(Protocol):
    """The two settings hedging reads (``PeerSettings`` has them)."""

    @property
    def resolve_retries(self) -> int:
        """At most this many providers are asked."""

    @property
    def hedge_after(self) -> float:
        """Seconds before a slow provider gets company."""


class Providers(Protocol):
    """What hedging needs of the peer path: providers of a key, and the penalty list.

    :class:`~spegel_core.mirror.peers.PeerFetcher` is one.
    """

    @property
    def settings(self) -> HedgeSettings:
        """The retry and hedge settings."""

    def providers(self, key: str) -> AsyncIterator[Peer]:
        """Providers of ``key``, best first."""

    def penalised(self, peer: Peer, key: str | None = None) -> bool:
        """Whether ``peer`` is penalised for every key, or for ``key``."""

    def penalise(self, peer: Peer, error: PeerError, key: str) -> None:
        """Penalise ``peer`` for ``error`` met while fetching ``key``."""


async def hedged(fetcher: Providers, key: str, attempt: Callable[[Peer], Awaitable[T]],
                 discard: Callable[[T], object] | None = None,
                 peers: AsyncIterator[Peer] | None = None) -> tuple[T, Peer] | None:
    """Try the providers of ``key`` in turn; when one is slow, ask the next as well.

    A provider that has not answered within ``hedge_after`` gets company: the next
    provider is asked in parallel and the first good answer wins (the other is
    cancelled, or discarded if it also finished). A penalised provider is never
    asked as company, only when nothing else is in flight. Failures are
    penalised. At most ``resolve_retries`` providers are asked. ``peers`` replaces
    the providers of ``key`` (a blob's committed-then-arriving providers).
    """
    if peers is None:
        peers = fetcher.providers(key)
    pending: dict[asyncio.Task[T], Peer] = {}
    held: Peer | None = None  # a penalised provider, asked once nothing else is
    asked = 0
    exhausted = False

    async def ask_next(hedging: bool) -> None:
        nonlocal asked, exhausted, held
        if held is not None:
            peer: Peer | None = held
            held = None
        else:
            peer = await anext(aiter(peers), None)
        if peer is None:
            exhausted = True
            return
        if hedging and fetcher.penalised(peer, key):
            held = peer  # penalised providers come last: no one better is left
            return
        asked += 1
        pending[asyncio.ensure_future(attempt(peer))] = peer

    try:
        await ask_next(hedging=False)
        while pending:
            can_hedge = (not exhausted and held is None
                         and asked < fetcher.settings.resolve_retries)
            done, _ = await asyncio.wait(
                pending, timeout=fetcher.settings.hedge_after if can_hedge else None,
                return_when=asyncio.FIRST_COMPLETED)
            if not done:
                await ask_next(hedging=True)  # the current provider is slow: hedge
                continue
            winner: tuple[T, Peer] | None = None
            for task in done:
                peer = pending.pop(task)
                try:
                    result = task.result()
                except PeerError as exc:
                    fetcher.penalise(peer, exc, key)
                    continue
                if winner is None:
                    winner = (result, peer)
                elif discard is not None:
                    discard(result)
            if winner is not None:
                return winner
            if (not pending and (held is not None or not exhausted)
                    and asked < fetcher.settings.resolve_retries):
                await ask_next(hedging=False)
        return None
    finally:
        for task in pending:
            task.cancel()
        if pending:
            for outcome in await asyncio.gather(*pending, return_exceptions=True):
                if discard is not None and not isinstance(outcome, BaseException):
                    discard(outcome)
        await peers.aclose()  # type: ignore[attr-defined]
