"""Settings of DNS discovery (flags ``--dns-*``, env ``SPEGEL_DNS_*``)."""

from __future__ import annotations

from pydantic import Field, field_validator

from spegel_core.config import CommaList, Duration, SpegelSettings
from spegel_core.hostnames import check_dns_name, parse_nameserver

__all__ = ["DNSSettings"]


class DNSSettings(SpegelSettings):
    """Bootstrap from the A/AAAA (and optionally SRV) records of a headless Service."""

    dns_bootstrap_domain: str | None = Field(
        default=None,
        description="Name whose A/AAAA records are the bootstrap peers "
        "(required with --bootstrap-kind dns), e.g. spegel-bootstrap.spegel.svc.cluster.local.",
    )
    dns_nameservers: CommaList = Field(
        default_factory=list,
        description="DNS servers to ask (IP, IP:PORT or [IPV6]:PORT); empty: /etc/resolv.conf.",
    )
    dns_sample_size: int = Field(
        default=5, ge=1, le=1000, description="Random bootstrap peers taken from the answer."
    )
    dns_udp_pool: int = Field(
        default=16, ge=0, le=10000,
        description="Sample from a UDP answer (even truncated) that lists at least this many "
        "peers instead of fetching all records over TCP; 0: always all records.",
    )
    dns_timeout: Duration = Field(
        default=2.0, gt=0, description="Longest time one resolution may take (e.g. 2s)."
    )
    dns_refresh_interval: Duration = Field(
        default=30 * 60.0, gt=0, description="How often to resolve again once joined (e.g. 30m)."
    )
    dns_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="Router UDP port of A/AAAA peers (default: the port of --router-addr).",
    )
    dns_srv_name: str | None = Field(
        default=None,
        description="SRV name whose targets and ports are the peers "
        "(e.g. _router._udp.spegel-bootstrap.spegel.svc.cluster.local); A/AAAA are the fallback.",
    )

    @field_validator("dns_bootstrap_domain", "dns_srv_name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None or not value.strip() else check_dns_name(value)

    @field_validator("dns_nameservers")
    @classmethod
    def _nameservers(cls, value: list[str]) -> list[str]:
        return [parse_nameserver(item) for item in value]
