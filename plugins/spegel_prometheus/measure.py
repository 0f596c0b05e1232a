"""``/debug/measure``: "is it working?" for one image reference, measured end to end.

Given an image reference it times the DHT lookup of the reference's key (the tag
key, or the digest), lists the providers found, then pulls the image through this
node's own mirror the way containerd does (HEAD by tag, the index, the manifest of
this machine's platform, its config and layers), one request at a time, and reports
each with its size, time, status and source (``local``, ``peer``). Every byte is
hashed against its digest and then dropped: measuring stores nothing.

One measurement runs at a time (a second one gets 429), each request has a timeout
and the number of blobs is bounded, so the page cannot be turned into a load tool.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from html import escape
from typing import Any
from urllib.parse import quote

import aiohttp

from spegel_core.errors import SpegelError
from spegel_core.mirror.auth import peer_headers
from spegel_core.oci.mediatypes import INDEX_TYPES, MANIFEST_TYPES
from spegel_core.oci.reference import Reference
from spegel_core.protocols import tag_key
from spegel_core.view import NodeView

ACCEPT = ", ".join(sorted(MANIFEST_TYPES))
#: Providers asked for, and how long the lookup may take.
LOOKUP_COUNT = 10
LOOKUP_TIMEOUT = 2.0
#: Per request, and blobs per measurement.
REQUEST_TIMEOUT = 60.0
MAX_BLOBS = 128
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
         "s390x": "s390x"}


class MeasureError(SpegelError):
    """The reference cannot be measured (bad reference, manifest not available)."""


@dataclass
class Fetch:
    """One request of the pull."""

    kind: str  # "manifest" | "config" | "layer"
    digest: str
    status: int
    size: int
    seconds: float
    source: str
    verified: bool


@dataclass
class Measurement:
    """What ``/debug/measure`` reports (also its JSON answer)."""

    reference: str
    key: str
    router: str
    lookup_seconds: float | None = None
    first_provider_seconds: float | None = None
    providers: list[str] = field(default_factory=list)
    digest: str | None = None
    platform: str | None = None
    fetches: list[Fetch] = field(default_factory=list)
    pull_seconds: float | None = None
    error: str | None = None

    @property
    def bytes(self) -> int:
        """The body bytes of every fetch together."""
        return sum(fetch.size for fetch in self.fetches)

    def as_dict(self) -> dict[str, Any]:
        """The measurement as the page's JSON answer (with ``bytes``)."""
        data = asdict(self)
        data["bytes"] = self.bytes
        return data


def host_platform() -> str:
    """This machine's platform as OCI names it (``linux/amd64``, ``linux/arm64``, ...)."""
    return f"linux/{_ARCH.get(platform.machine(), platform.machine())}"


def mirror_base(node: NodeView) -> str:
    """This node's mirror as a client reaches it (loopback when it listens everywhere)."""
    address = node.config.core.registry_addr
    host = address.host or "127.0.0.1"
    host = "127.0.0.1" if host == "0.0.0.0" else "::1" if host == "::" else host
    return f"http://{'[' + host + ']' if ':' in host else host}:{address.port}"


async def measure(node: NodeView, text: str) -> Measurement:
    """Measure ``text`` (an image reference); never raises for what it finds."""
    try:
        reference = Reference.parse(text.strip())
    except Exception as exc:  # the parser's own errors: say what is wrong, no traceback
        raise MeasureError(f"invalid image reference {text[:100]!r}: {exc}") from None
    key = tag_key(reference) if reference.digest is None else reference.digest
    result = Measurement(reference=str(reference), key=key,
                         router=node.router_name or "none")
    if node.router_name is not None:
        await _lookup(node, result)
    started = time.perf_counter()
    try:
        await _pull(node, reference, result)
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError, KeyError,
            MeasureError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.pull_seconds = time.perf_counter() - started
    return result


async def _lookup(node: NodeView, result: Measurement) -> None:
    started = time.perf_counter()
    try:
        async for peer in node.lookup(result.key, LOOKUP_COUNT, LOOKUP_TIMEOUT):
            if result.first_provider_seconds is None:
                result.first_provider_seconds = time.perf_counter() - started
            result.providers.append(peer.url)
    except (OSError, TimeoutError, SpegelError) as exc:
        result.error = f"lookup failed: {exc}"
    result.lookup_seconds = time.perf_counter() - started


async def _pull(node: NodeView, reference: Reference, result: Measurement) -> None:
    base = f"{mirror_base(node)}/v2/{reference.repository}"
    ns = f"?ns={quote(reference.registry, safe='')}"
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    headers = dict(peer_headers(node.config))
    async with aiohttp.ClientSession(timeout=timeout, headers=headers, trust_env=False,
                                     auto_decompress=False) as session:
        digest = reference.digest
        if digest is None:
            async with session.head(f"{base}/manifests/{reference.tag}{ns}",
                                    headers={"Accept": ACCEPT}) as response:
                if response.status != 200:
                    raise MeasureError(f"the mirror answered {response.status} for the tag: "
                                       "no node has it (containerd would go upstream)")
                digest = response.headers.get("Docker-Content-Digest", "")
        result.digest = digest
        document = await _get(session, f"{base}/manifests/{digest}{ns}", "manifest", digest,
                              result)
        if document.get("mediaType") in INDEX_TYPES or "manifests" in document:
            child = _pick_platform(document)
            result.platform = child[1]
            document = await _get(session, f"{base}/manifests/{child[0]}{ns}", "manifest",
                                  child[0], result)
        descriptors = [("config", document["config"]),
                       *(("layer", layer) for layer in document.get("layers", []))]
        for kind, descriptor in descriptors[:MAX_BLOBS]:
            await _get(session, f"{base}/blobs/{descriptor['digest']}{ns}", kind,
                       descriptor["digest"], result)


def _pick_platform(index: dict[str, Any]) -> tuple[str, str]:
    wanted = host_platform()
    entries = [entry for entry in index.get("manifests", []) if isinstance(entry, dict)]
    if not entries:
        raise MeasureError("the index lists no manifest")
    for entry in entries:
        found = entry.get("platform") or {}
        if f"{found.get('os')}/{found.get('architecture')}" == wanted:
            return str(entry["digest"]), wanted
    first = entries[0].get("platform") or {}
    return str(entries[0]["digest"]), f"{first.get('os')}/{first.get('architecture')}"


async def _get(session: aiohttp.ClientSession, url: str, kind: str, digest: str,
               result: Measurement) -> dict[str, Any]:
    started = time.perf_counter()
    algorithm, _, expected = digest.partition(":")
    hasher = hashlib.new(algorithm or "sha256")
    kept = bytearray()
    size = 0
    async with session.get(url, headers={"Accept": ACCEPT}) as response:
        if response.status == 200:
            async for chunk in response.content.iter_chunked(1024 * 1024):
                hasher.update(chunk)
                size += len(chunk)
                if kind == "manifest":
                    kept += chunk
        else:
            await response.read()
        fetch = Fetch(kind=kind, digest=digest, status=response.status, size=size,
                      seconds=time.perf_counter() - started,
                      source=response.headers.get("X-Spegel-Source", "-"),
                      verified=response.status == 200 and hasher.hexdigest() == expected)
    result.fetches.append(fetch)
    if response.status != 200:
        raise MeasureError(f"{kind} {digest}: HTTP {response.status}")
    if not fetch.verified:
        raise MeasureError(f"{kind} {digest}: the bytes do not match the digest")
    if kind != "manifest":
        return {}
    loaded = json.loads(bytes(kept))
    if not isinstance(loaded, dict):
        raise MeasureError(f"{digest} is not a manifest")
    return loaded


class MeasureGate:
    """One measurement at a time."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    @property
    def busy(self) -> bool:
        """Whether a measurement is running."""
        return self._lock.locked()

    async def run(self, node: NodeView, text: str) -> Measurement:
        """Measure ``text`` once the measurement before it (if any) has finished."""
        async with self._lock:
            return await measure(node, text)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def render_measurement(result: Measurement | None, image: str = "", *,
                       error: str | None = None) -> str:
    """The HTML of the measure page (a form, and the result or ``error`` when there is one)."""
    form = (f'<form method="get" action="/debug/measure"><label>Image reference '
            f'<input name="image" size="60" value="{escape(image, quote=True)}" '
            f'placeholder="docker.io/library/nginx:1.27"></label> '
            f'<button type="submit">Measure</button> <a href="?image={quote(image)}&amp;'
            f'format=json">JSON</a></form>')
    body = f'<p class="bad" id="error">{escape(error)}</p>' if error else ""
    if result is not None:
        providers = "".join(f"<li><code>{escape(p)}</code></li>" for p in result.providers)
        rows = "".join(
            f"<tr><td>{escape(f.kind)}</td><td><code>{escape(f.digest)}</code></td>"
            f'<td class="n">{f.status}</td><td class="n">{f.size}</td>'
            f'<td class="n">{_ms(f.seconds)}</td><td class="source">{escape(f.source)}</td>'
            f"<td>{'yes' if f.verified else 'NO'}</td></tr>" for f in result.fetches)
        error = (f'<p class="bad" id="error">{escape(result.error)}</p>'
                 if result.error else '<p class="ok" id="error">Pulled and verified.</p>')
        body = f"""
<h2>Lookup</h2><table id="lookup">
<tr><th>key</th><td><code>{escape(result.key)}</code></td></tr>
<tr><th>router</th><td>{escape(result.router)}</td></tr>
<tr><th>first provider after</th><td>{_ms(result.first_provider_seconds)}</td></tr>
<tr><th>lookup took</th><td>{_ms(result.lookup_seconds)}</td></tr>
<tr><th>providers</th><td>{len(result.providers)}</td></tr></table>
<ul id="providers">{providers}</ul>
<h2>Pull through this node's mirror</h2>{error}
<p>digest <code>{escape(result.digest or "-")}</code>, platform
{escape(result.platform or "-")}, {result.bytes} bytes in {_ms(result.pull_seconds)}.</p>
<table id="fetches"><thead><tr><th>kind</th><th>digest</th><th>status</th><th>bytes</th>
<th>time</th><th>source</th><th>verified</th></tr></thead><tbody>{rows}</tbody></table>"""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>spegel measure</title>
<style>body{{font:14px/1.4 system-ui,sans-serif;margin:1.5em;max-width:70em}}
td,th{{padding:.15em .7em;text-align:left;border-bottom:1px solid #eee}}
td.n{{text-align:right}}code{{font:12px ui-monospace,monospace}}
.ok{{color:#070}}.bad{{color:#b00}}</style></head><body>
<h1>Measure an image</h1><p><a href="/debug">back to the node</a></p>{form}{body}
</body></html>
"""
