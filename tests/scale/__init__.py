"""The scale simulation: ``nox -s scale -- --nodes N`` (see ``docs/scale.md``).

N real :class:`~spegel_kademlia.KademliaRouter` nodes with real
:class:`~spegel_dns.DNSDiscovery`, over UDP on distinct loopback addresses
(127.x.y.z, port 5001 each), bootstrapping from a dnsmasq on loopback, spread over
worker processes. :mod:`.run` is the command and coordinator, :mod:`.worker` hosts
nodes, :mod:`.simrouter` adds measurement to the router, :mod:`.population` says
which node has which address, id and keys.
"""
