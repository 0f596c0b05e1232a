"""``/debug``: one plain HTML page about this node, for people (no scripts, no assets).

It shows the node's id and addresses, the store and the router (with its peers),
the keys it advertises, the hit ratio and bytes by source, the last requests and
the peers on the penalty list. Every value that came from outside (request paths,
image names) is escaped.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from html import escape

from spegel_core import __version__
from spegel_core.view import NodeView
from spegel_prometheus.recent import RecentRequests

#: Tags listed by name; beyond that only their number is shown.
MAX_TAGS_LISTED = 50

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:70em}
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.4em 0}
td,th{padding:.15em .7em;text-align:left;border-bottom:1px solid #eee;vertical-align:top}
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
code{font:12px ui-monospace,monospace}.ok{color:#070}.bad{color:#b00}.muted{color:#777}
code.path{word-break:break-all}#requests{width:100%}
"""


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], *, numeric: set[int] | None = None,
           id_: str = "") -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{cell}</td>' if i in numeric else f"<td>{cell}</td>"
                         for i, cell in enumerate(row)) + "</tr>"
        for row in rows)
    ident = f' id="{id_}"' if id_ else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pairs(pairs: Iterable[tuple[str, str]], id_: str = "") -> str:
    rows = [(f"<th>{escape(k)}</th>", v) for k, v in pairs]
    ident = f' id="{id_}"' if id_ else ""
    return f"<table{ident}>" + "".join(f"<tr>{k}<td>{v}</td></tr>" for k, v in rows) + "</table>"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _state(ok: bool, text: str) -> str:
    return f'<span class="{"ok" if ok else "bad"}">{escape(text)}</span>'


def render(node: NodeView, recent: RecentRequests, *, metrics_addr: str) -> str:
    """The page as a string."""
    core = node.config.core
    store_status = node.store_status()
    router_name = node.router_name
    router_status = node.router_status()
    node_id = router_status.node_id if router_status is not None else "(no router)"

    identity = _pairs([
        ("node id", f'<code id="node-id">{escape(node_id)}</code>'),
        ("mirror", f"<code>{escape(str(core.registry_addr))}</code>"),
        ("router", f"<code>{escape(router_status.address if router_status else '-')}</code>"
                   f" ({escape(router_name or 'none')})"),
        ("metrics", f"<code>{escape(metrics_addr)}</code>"),
        ("store", f"{escape(node.store_name)}: "
                  + _state(store_status.ready, "ready" if store_status.ready else "not ready")
                  + (f" <span class='muted'>{escape(store_status.detail)}</span>"
                     if store_status.detail else "")),
        ("started", _state(node.started, "yes" if node.started else "not yet")),
        ("version", escape(__version__)),
    ], id_="identity")

    if router_status is not None:
        peers = _pairs([
            ("peers in routing table", f'<span id="peer-count">{router_status.peers}</span>'),
            ("state", _state(router_status.detail == "ok", router_status.detail or "-")),
            ("advertised keys", str(router_status.advertised_keys)),
            *((escape(str(k)), escape(str(v))) for k, v in router_status.extra.items()),
        ], id_="peers")
    else:
        peers = "<p>No router: this node serves its own content only.</p>"

    if router_name is not None:
        tracker = node.advertised()
        by_registry = Counter(tracker.tags.values())
        image_digests = Counter(registry for registry, digest in set(tracker.images.values())
                                if digest in tracker.digests)
        registries = sorted(set(by_registry) | set(image_digests))
        keys = _table(["kind", "registry", "count"], [
            *(("tag", escape(reg), str(by_registry[reg])) for reg in registries),
            *(("image digest", escape(reg), str(image_digests[reg])) for reg in registries),
            ("content digest", "<span class='muted'>(all)</span>", str(len(tracker.digests))),
            ("arriving digest", "<span class='muted'>(downloading now)</span>",
             str(len(tracker.arriving))),
        ], numeric={2}, id_="advertised")
        tags = sorted(tracker.tags)
        listed = "".join(f"<li><code>{escape(tag)}</code></li>" for tag in tags[:MAX_TAGS_LISTED])
        more = (f"<li class='muted'>... and {len(tags) - MAX_TAGS_LISTED} more</li>"
                if len(tags) > MAX_TAGS_LISTED else "")
        keys += f"<ul id='tags'>{listed}{more}</ul>" if tags else ""
    else:
        keys = "<p>Nothing advertised (no router).</p>"

    ratio = recent.hit_ratio
    ratio_text = f"{ratio * 100:.1f}%" if ratio is not None else "n/a"
    traffic = _pairs([
        ("hit ratio", f'<span id="hit-ratio">{ratio_text}</span> '
                      f"<span class='muted'>({recent.hits} served by peers, {recent.misses} "
                      "not found on any peer)</span>"),
        ("answered locally", str(recent.local)),
        ("bytes from local store", f'<span id="bytes-local">{_size(recent.bytes["local"])}</span>'),
        ("bytes from peers", f'<span id="bytes-peer">{_size(recent.bytes["peer"])}</span>'),
    ], id_="traffic")

    now = time.time()
    requests = _table(
        ["time (UTC)", "method", "path", "registry", "kind", "source", "status", "size",
         "duration"],
        [(datetime.fromtimestamp(seen.at, UTC).strftime("%H:%M:%S.%f")[:-3],
          escape(seen.request.method), f'<code class="path">{escape(seen.request.path)}</code>',
          escape(seen.request.registry), escape(seen.request.kind),
          f'<span class="source">{escape(seen.request.source.value)}</span>',
          str(seen.request.status), _size(seen.request.bytes),
          f"{seen.request.duration_s * 1000:.1f} ms")
         for seen in recent.newest_first()],
        numeric={6, 7, 8}, id_="requests")
    if not len(recent):
        requests = "<p id='requests'>No request yet.</p>"

    penalties = node.penalties()
    penalised = (_table(["peer (key: for that content only)", "penalised for"],
                        [(f"<code>{escape(peer)}</code>", f"{left:.1f} s more")
                         for peer, left in sorted(penalties.items())],
                        numeric={1}, id_="penalties")
                 if penalties else "<p id='penalties'>No peer is penalised.</p>")

    flights = _flights(node)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>spegel {escape(node_id[:12])}</title>
<meta name="viewport" content="width=device-width">
<style>{_STYLE}</style></head>
<body>
<h1>spegel node <code>{escape(node_id[:16])}</code></h1>
<p class="muted">Generated {datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds")}.
Figures are live; reload for new ones. Machine-readable: <a href="/metrics">/metrics</a>.
Is it working for an image? <a href="/debug/measure">Measure it</a>.</p>
<h2>Node</h2>{identity}
<h2>Peers</h2>{peers}
<h2>Penalised peers</h2>{penalised}
<h2>Single flight</h2>{flights}
<h2>Advertised keys</h2>{keys}
<h2>Mirror traffic</h2>{traffic}
<p class="muted">Hit ratio counts only requests this node could not answer from its own
store: a hit is content a peer served, a miss a 404 after asking peers.</p>
<h2>Last requests</h2>{requests}
</body></html>
"""


def _flights(node: NodeView) -> str:
    """This node's claims and the flights it holds as a rendezvous.

    Claims: digest, role, depth, parent. Flights: fetcher, members, depth, most children.
    """
    snap = node.single_flight()
    if snap is None:
        return "<p id='flights'>Single flight is off.</p>"
    claims = _table(["digest", "role", "depth", "streams from", "age", "renewals"],
                    [(f"<code>{escape(str(c['digest'])[:19])}</code>", escape(str(c["role"])),
                      str(c["depth"]), escape(str(c["parent"]) or "upstream"),
                      f"{c['age_s']} s", str(c["renewals"])) for c in snap["claims"]],
                    numeric={2, 4, 5}, id_="flights")
    held = _table(["key", "fetcher", "members", "depth", "most children", "expires in"],
                  [(f"<code>{escape(str(f['key'])[:16])}</code>", escape(str(f["fetcher"])),
                    str(f["members"]), str(f["depth"]), str(f["max_children"]),
                    f"{f['expires_in']} s") for f in snap["rendezvous"]],
                  numeric={2, 3, 4, 5}, id_="rendezvous")
    counts = ", ".join(f"{k} {v}" for k, v in snap["counts"].items())
    return (f"<p class='muted'>wait {snap['wait_s']} s, fan-out {snap['fanout']}; {counts}"
            f"</p><h3>Claims of this node</h3>{claims}<h3>Flights held here (rendezvous)</h3>"
            f"{held}")
