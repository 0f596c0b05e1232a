"""The plugin hooks of the Kademlia router (``--router kademlia``)."""

from __future__ import annotations

from spegel_core import hookimpl
from spegel_core.config import SettingsRegistry, SpegelConfig
from spegel_core.peer_filter import PeerFilter
from spegel_core.protocols import Discovery, MetricsSink, Router
from spegel_kademlia.ids import load_or_create_node_id
from spegel_kademlia.keys import load_cluster_keys, load_optional_cluster_keys
from spegel_kademlia.node import KademliaRouter
from spegel_kademlia.settings import KademliaSettings

#: The value of ``--router`` that selects this router.
ROUTER_NAME = "kademlia"


@hookimpl
def spegel_add_settings(registry: SettingsRegistry) -> None:
    """Declare the ``--kademlia-*`` settings."""
    registry.add(KademliaSettings, owner="kademlia")


@hookimpl(trylast=True)
def spegel_make_router(
    config: SpegelConfig, discovery: list[Discovery], metrics: MetricsSink
) -> Router | None:
    """A :class:`KademliaRouter` on ``--router-addr`` when ``--router kademlia``.

    Provider records carry the mirror port of ``--registry-addr``; the address other
    nodes reach this one at is whatever source address they see, so binding 0.0.0.0
    needs no advertised-address setting. The node id persists under ``--data-dir``.
    Datagrams are authenticated with the keys of ``--cluster-key-file`` (read here, so
    a missing or short key stops the node before it serves, unless
    ``--cluster-key-optional`` and no key file exists: then it runs open, with a
    warning), and peers outside
    ``--peer-cidrs`` are ignored.
    """
    if config.core.router != ROUTER_NAME:
        return None
    address = config.core.router_addr
    settings = config.get(KademliaSettings)
    if settings.cluster_key_optional:
        keys = load_optional_cluster_keys(settings.cluster_key_file)
    else:
        keys = load_cluster_keys(settings.cluster_key_file) if settings.cluster_key_file else None
    peers = PeerFilter(config.core.peer_cidrs)
    return KademliaRouter(
        host=address.host,  # empty: dual-stack where the kernel allows
        port=address.port,
        mirror_port=config.core.registry_addr.port,
        discovery=discovery,
        metrics=metrics,
        settings=settings,
        node_id=load_or_create_node_id(config.core.data_dir),
        cluster_key=keys,
        allowed=peers.allows if peers.restricted else None,
    )
