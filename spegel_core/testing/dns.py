"""DNS servers on loopback for tests of DNS discovery.

- :class:`DnsServer`: a real ``dnsmasq`` (Debian ``dnsmasq-base``) answering from a
  hosts file, with TTL 0; :meth:`DnsServer.reload` re-reads the file (SIGHUP).
- :class:`InProcessDns`: an asyncio server built on ``dnslib`` (the ``test``
  extra), over UDP and TCP, whose records tests change at will, that can truncate
  large UDP answers, go silent, stop and start again on the same port.

Both only ever listen on 127.0.0.0/8. Pass their :attr:`nameserver` to the
discovery under test: a test must never ask the machine's real resolver.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

__all__ = ["DnsServer", "InProcessDns", "SrvRecord", "dnsmasq_path", "free_port"]

_STANDARD_DNSMASQ = "/usr/sbin/dnsmasq"


def dnsmasq_path() -> str | None:
    """Where ``dnsmasq`` is installed, or None."""
    found = shutil.which("dnsmasq")
    if found:
        return found
    return _STANDARD_DNSMASQ if os.access(_STANDARD_DNSMASQ, os.X_OK) else None


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host`` (a loopback address)."""
    _check_loopback(host)
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"no free UDP+TCP port on {host}")


def _check_loopback(host: str) -> None:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"test DNS servers listen on loopback only, not {host}")


@dataclass(frozen=True, slots=True)
class SrvRecord:
    """An SRV record: ``name`` -> ``target:port``."""

    name: str
    target: str
    port: int
    priority: int = 0
    weight: int = 0


# ---------------------------------------------------------------------------
# dnsmasq
# ---------------------------------------------------------------------------
class DnsServer:
    """``dnsmasq`` on ``host:port`` answering A/AAAA records from a hosts file.

    Names under ``domain`` that are not in the file get NXDOMAIN (``--local``);
    answers have TTL 0 so resolvers do not cache them. SRV records are command-line
    options of dnsmasq, so they are fixed at :meth:`start`.

    Use as a context manager, or call :meth:`start` and :meth:`stop`::

        with DnsServer(tmp_path) as dns:
            dns.set_records("nodes.test", ["127.0.0.2", "127.0.0.3"])
            dns.reload()
            ... DNSDiscovery("nodes.test", nameservers=[dns.nameserver], ...)
    """

    def __init__(self, workdir: Path, *, host: str = "127.0.0.1", port: int | None = None,
                 domain: str = "test", srv: Sequence[SrvRecord] = (),
                 dnsmasq: str | None = None) -> None:
        _check_loopback(host)
        self.workdir = Path(workdir)
        self.host = host
        self.port = port
        self.domain = domain
        self.srv = list(srv)
        self.dnsmasq = dnsmasq or dnsmasq_path()
        self.records: dict[str, list[str]] = {}
        self.hosts_file = self.workdir / "dns-hosts"
        self.log_file = self.workdir / "dnsmasq.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def nameserver(self) -> str:
        """``"HOST:PORT"``, as ``--dns-nameservers`` takes it."""
        if self.port is None:
            raise RuntimeError("the server has not been started")
        return f"{self.host}:{self.port}"

    # -- records ---------------------------------------------------------------------
    def set_records(self, name: str, addresses: Iterable[str]) -> None:
        """Make ``name`` resolve to ``addresses`` (IPv4 -> A, IPv6 -> AAAA).

        Written to the hosts file at once; a running server sees it after
        :meth:`reload`.
        """
        self.records[name.lower().rstrip(".")] = [str(ipaddress.ip_address(a)) for a in addresses]
        self._write_hosts()

    def remove(self, name: str) -> None:
        """Forget ``name`` (NXDOMAIN after :meth:`reload`)."""
        self.records.pop(name.lower().rstrip("."), None)
        self._write_hosts()

    def _write_hosts(self) -> None:
        lines = [f"{address} {name}" for name, addresses in self.records.items()
                 for address in addresses]
        temporary = self.hosts_file.with_suffix(".tmp")
        temporary.write_text("".join(f"{line}\n" for line in lines))
        temporary.replace(self.hosts_file)

    # -- process ---------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> DnsServer:
        """Start dnsmasq and wait until it answers; returns self."""
        if self.dnsmasq is None:
            raise RuntimeError("dnsmasq is not installed (Debian package dnsmasq-base)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_hosts()
        fixed = self.port is not None
        for _ in range(1 if fixed else 5):
            if not fixed:
                self.port = free_port(self.host)
            if self._spawn(timeout):
                return self
        raise RuntimeError(f"dnsmasq did not start on {self.host}:{self.port}:\n{self.log()}")

    def arguments(self) -> list[str]:
        """The dnsmasq command line :meth:`start` runs (a subclass may change it).

        :returns: the program and its arguments.
        """
        assert self.dnsmasq is not None and self.port is not None
        args = [
            self.dnsmasq, "--keep-in-foreground", "--log-facility=-", "--log-queries",
            "--conf-file=/dev/null", "--pid-file=", f"--port={self.port}",
            f"--listen-address={self.host}", "--bind-interfaces", "--no-resolv", "--no-hosts",
            f"--addn-hosts={self.hosts_file}", "--local-ttl=0", "--no-negcache",
            f"--local=/{self.domain}/",
        ]
        if os.geteuid() == 0:  # dnsmasq would otherwise drop to "nobody" and lose the file
            args += ["--user=root", "--group=root"]
        for record in self.srv:
            args.append(f"--srv-host={record.name},{record.target},{record.port},"
                        f"{record.priority},{record.weight}")
        return args

    def _spawn(self, timeout: float) -> bool:
        self.log_file.write_bytes(b"")
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(self.arguments(), stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False  # most likely the port was taken meanwhile: try another
            if self._reads() >= 1 and self._accepts():
                return True
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"dnsmasq did not answer within {timeout}s:\n{self.log()}")

    def _reads(self) -> int:
        return self.log().count(f"read {self.hosts_file}")

    def _accepts(self) -> bool:
        assert self.port is not None
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def reload(self, timeout: float = 5.0) -> None:
        """Make the running server re-read its records (SIGHUP) and wait until it has."""
        if self._process is None or self._process.poll() is not None:
            raise RuntimeError("dnsmasq is not running")
        self._write_hosts()
        before = self._reads()
        self._process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self._reads() <= before:
            if time.monotonic() > deadline:
                raise RuntimeError(f"dnsmasq did not reload within {timeout}s:\n{self.log()}")
            time.sleep(0.005)

    def stop(self) -> None:
        """Stop dnsmasq (its port stays reserved in :attr:`port` for a restart)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    @property
    def running(self) -> bool:
        """Whether the dnsmasq process is alive."""
        return self._process is not None and self._process.poll() is None

    def log(self) -> str:
        """What dnsmasq logged (queries included)."""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<DnsServer dnsmasq {self.host}:{self.port} {state} names={len(self.records)}>"


# ---------------------------------------------------------------------------
# In-process server (dnslib)
# ---------------------------------------------------------------------------
_RCODE_NOERROR = 0
_RCODE_NXDOMAIN = 3
_OPT = 41


class InProcessDns:
    """A DNS server in the test's event loop, over UDP and TCP, built on dnslib.

    Records live in :attr:`addresses` (name -> IPs: A or AAAA by family) and
    :attr:`services` (name -> SRV records) and may change between any two
    questions. Unknown names get NXDOMAIN; known names without records of the
    asked type get an empty answer (NODATA).

    Switches:
        udp_limit: a UDP answer larger than this (or than the EDNS size the client
            offers, when larger) is sent empty with the TC bit, like a real server.
        tcp: whether to answer over TCP (where c-ares retries truncated answers).
        mute: receive questions but never answer (timeouts).
        srv_additional: put SRV targets' addresses in the additional section.

    :attr:`queries` records ``(transport, name, type)`` of every question.
    """

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, *, tcp: bool = True,
                 udp_limit: int = 512, ttl: int = 0) -> None:
        _check_loopback(host)
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.tcp = tcp
        self.udp_limit = udp_limit
        self.ttl = ttl
        self.mute = False
        self.srv_additional = True
        self.addresses: dict[str, list[str]] = {}
        self.services: dict[str, list[SrvRecord]] = {}
        self.queries: list[tuple[str, str, str]] = []
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    @property
    def nameserver(self) -> str:
        """``"HOST:PORT"``, as ``--dns-nameservers`` takes it."""
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the server is listening."""
        return self._udp is not None

    # -- records ---------------------------------------------------------------------
    def set_addresses(self, name: str, addresses: Iterable[str]) -> None:
        """Make ``name`` resolve to ``addresses`` (IPv4 -> A, IPv6 -> AAAA)."""
        self.addresses[_key(name)] = [str(ipaddress.ip_address(a)) for a in addresses]

    def set_services(self, name: str, records: Iterable[tuple[str, int]]) -> None:
        """Make ``name`` have SRV records ``(target, port)``."""
        self.services[_key(name)] = [SrvRecord(_key(name), _key(target), port)
                                     for target, port in records]

    def remove(self, name: str) -> None:
        """Forget ``name`` (NXDOMAIN from now on)."""
        self.addresses.pop(_key(name), None)
        self.services.pop(_key(name), None)

    def count(self, transport: str | None = None, qtype: str | None = None) -> int:
        """Questions received, optionally only over ``"udp"``/``"tcp"`` and of one type."""
        return sum(1 for t, _, q in self.queries
                   if (transport is None or t == transport) and (qtype is None or q == qtype))

    # -- serving ---------------------------------------------------------------------
    async def start(self) -> InProcessDns:
        """Listen on ``host:port`` (again, after :meth:`stop`); returns self."""
        if self._udp is not None:
            return self
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self), local_addr=(self.host, self.port))
        self._udp = transport
        if self.tcp:
            self._tcp = await asyncio.start_server(self._serve_tcp, self.host, self.port,
                                                   reuse_address=True)
        return self

    async def stop(self) -> None:
        """Stop listening (the port is kept for :meth:`start`); safe to call twice."""
        udp, self._udp = self._udp, None
        if udp is not None:
            udp.close()
        server, self._tcp = self._tcp, None
        if server is not None:
            server.close()
            for writer in list(self._connections):
                writer.close()
            await server.wait_closed()
        await asyncio.sleep(0)

    aclose = stop

    async def __aenter__(self) -> InProcessDns:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def answer(self, data: bytes, transport: str) -> bytes | None:
        """The wire answer to the wire question ``data`` (None: do not answer)."""
        dnslib = _dnslib()
        try:
            request = dnslib.DNSRecord.parse(data)
        except (dnslib.DNSError, struct.error, ValueError, IndexError):
            return None
        name = _key(str(request.q.qname))
        qtype = _type_name(request.q.qtype)
        self.queries.append((transport, name, qtype))
        if self.mute:
            return None
        reply = request.reply()
        reply.header.aa = 1
        if name not in self.addresses and name not in self.services:
            reply.header.rcode = _RCODE_NXDOMAIN
        else:
            reply.header.rcode = _RCODE_NOERROR
            self._fill(reply, name, qtype)
        packed: bytes = reply.pack()
        if transport == "udp" and len(packed) > max(self.udp_limit, _edns_size(request)):
            truncated = request.reply()
            truncated.header.aa = 1
            truncated.header.tc = 1
            packed = truncated.pack()
        return packed

    def _fill(self, reply: Any, name: str, qtype: str) -> None:
        dnslib = _dnslib()
        QTYPE, RR = dnslib.QTYPE, dnslib.RR
        if qtype in ("A", "AAAA"):
            for address in self._of_family(name, qtype):
                reply.add_answer(RR(name, getattr(QTYPE, qtype), rdata=_rdata(address),
                                    ttl=self.ttl))
        elif qtype == "SRV":
            for record in self.services.get(name, []):
                reply.add_answer(RR(name, QTYPE.SRV, ttl=self.ttl, rdata=dnslib.SRV(
                    record.priority, record.weight, record.port, record.target)))
                if self.srv_additional:
                    for address in self.addresses.get(record.target, []):
                        rtype = QTYPE.AAAA if ":" in address else QTYPE.A
                        reply.add_ar(RR(record.target, rtype, rdata=_rdata(address),
                                        ttl=self.ttl))

    def _of_family(self, name: str, qtype: str) -> list[str]:
        want_v6 = qtype == "AAAA"
        return [a for a in self.addresses.get(name, []) if (":" in a) == want_v6]

    async def _serve_tcp(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while True:
                header = await reader.readexactly(2)
                data = await reader.readexactly(struct.unpack("!H", header)[0])
                packed = self.answer(data, "tcp")
                if packed is not None:
                    writer.write(struct.pack("!H", len(packed)) + packed)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._connections.discard(writer)
            writer.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (f"<InProcessDns {self.nameserver} {state} names={len(self.addresses)} "
                f"queries={len(self.queries)}>")


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: InProcessDns) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        packed = self.server.answer(data, "udp")
        if packed is not None and self.transport is not None:
            self.transport.sendto(packed, addr)


def _key(name: str) -> str:
    return name.lower().rstrip(".")


def _dnslib() -> Any:
    """dnslib, imported on first use: it comes with the ``test`` extra only."""
    import dnslib  # type: ignore[import-untyped]  # no type hints

    return dnslib


def _type_name(qtype: int) -> str:
    return str(_dnslib().QTYPE.get(qtype, str(qtype)))


def _rdata(address: str) -> Any:
    dnslib = _dnslib()
    return dnslib.AAAA(address) if ":" in address else dnslib.A(address)


def _edns_size(request: Any) -> int:
    for record in request.ar:
        if record.rtype == _OPT:
            return int(record.rclass)
    return 0
