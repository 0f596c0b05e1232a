"""A small cluster on one machine's loopback: real processes, no Kubernetes.

Public core API, used by ``spegel demo --fleet``, the benchmarks and the test kit
(:mod:`spegel_core.testing` builds its fixtures on it):

- :mod:`~spegel_core.localcluster.containerd`: a ``containerd`` daemon with its own
  root, state and sockets (:class:`~spegel_core.localcluster.containerd.ContainerdDaemon`).
- :mod:`~spegel_core.localcluster.upstream`: the Debian ``docker-registry`` as the
  upstream, and ``skopeo`` to fill it.
- :mod:`~spegel_core.localcluster.throttle`: a TCP proxy that throttles and counts
  what the upstream sends (the cluster's link to the registry).
- :mod:`~spegel_core.localcluster.loopback`: free 127.x addresses and ports.
- :mod:`~spegel_core.localcluster.fleet`: N ``spegel registry`` nodes, each with its
  own containerd, behind one throttled upstream.

Every address is in 127.0.0.0/8. Nothing here is imported by the node itself.
"""
