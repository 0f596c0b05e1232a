"""Settings of the Kademlia router (flags ``--kademlia-*``, env ``SPEGEL_KADEMLIA_*``).

The listen address is the core's ``--router-addr`` and the node id is kept under the
core's ``--data-dir``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from spegel_core.config import CommaList, Duration, SpegelSettings


class KademliaSettings(SpegelSettings):
    """Tuning of the DHT; the defaults are Spegel's field values."""

    kademlia_k: int = Field(default=20, ge=1, le=32, description="Contacts per k-bucket.")
    kademlia_alpha: int = Field(default=3, ge=1, le=16, description="Parallel lookup queries.")
    kademlia_rpc_timeout: Duration = Field(
        default=0.15, gt=0, description="Timeout of one DHT request (e.g. 150ms)."
    )
    kademlia_rpc_retries: int = Field(
        default=1, ge=0, le=5, description="Retries of a ping or ADD_PROVIDER (lookups hedge)."
    )
    kademlia_hedge_after: Duration = Field(
        default=0.05, gt=0, description="A lookup query this late gets a hedged extra query."
    )
    kademlia_max_failures: int = Field(
        default=3, ge=1, le=100, description="Consecutive timeouts that evict a contact."
    )
    kademlia_provider_ttl: Duration = Field(
        default=19 * 60.0, gt=0, description="Validity of a provider record."
    )
    kademlia_reprovide_interval: Duration = Field(
        default=15 * 60.0, gt=0, description="How often advertised keys are announced again."
    )
    kademlia_reprovide_jitter: Duration = Field(
        default=2 * 60.0, ge=0, description="Random +- offset of each key's reprovide time."
    )
    kademlia_reprovide_concurrency: int = Field(
        default=8, ge=1, le=256, description="Keys announced at once (caps reprovide work)."
    )
    kademlia_reannounce_growth: float = Field(
        default=2.0, ge=0, le=100,
        description="Announce a key again once the estimated network size has grown this "
        "many times since it was last announced, so that records follow a growing network "
        "(0: off, records move only at the reprovide interval; else at least 1.1).",
    )
    kademlia_lookup_count: int = Field(
        default=3, ge=1, le=255, description="Providers asked of each node in a lookup."
    )
    kademlia_bootstrap_backoff_max: Duration = Field(
        default=30.0, gt=0, description="Longest wait between bootstrap attempts."
    )
    kademlia_refresh_interval: Duration = Field(
        default=10 * 60.0, gt=0, description="Buckets without a lookup this long are refreshed."
    )
    kademlia_max_per_ip: int = Field(
        default=2, ge=0, le=1_000_000,
        description="Most routing-table ids per IP address (an IPv6 /64), besides one per "
        "ip:port (0: no limit). Raise it only where many nodes share an address (tests).",
    )
    kademlia_address_validation: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Prove a sender's address by a round trip before it enters the routing "
        "table or gets more than 3x the bytes it sent. auto: on without a cluster key.",
    )
    kademlia_answer_rate: float = Field(
        default=2000.0, ge=0,
        description="Answers per second to one validated source IP (0: unlimited).",
    )
    kademlia_unvalidated_answer_rate: float = Field(
        default=50.0, ge=0,
        description="Answers per second to one source IP not yet validated (0: unlimited).",
    )
    cluster_key_file: CommaList = Field(
        default_factory=list,
        description="File holding the DHT's pre-shared key (>= 16 bytes; a Secret). Two files, "
        "or two lines of one, during a key rotation: the first signs, both are accepted. "
        "Unset: the DHT runs unauthenticated.",
    )
    cluster_key_optional: bool = Field(
        default=False,
        description="When no --cluster-key-file exists, run the DHT open (with a warning) "
        "instead of stopping: the DaemonSet mounts an optional Secret. A file that exists "
        "must hold a valid key.",
    )

    @field_validator("kademlia_reannounce_growth")
    @classmethod
    def _growth_off_or_real(cls, factor: float) -> float:
        if 0 < factor < 1.1:
            raise ValueError(f"{factor:g} is too small a growth (0: off, or at least 1.1)")
        return factor

    @field_validator("kademlia_reprovide_jitter")
    @classmethod
    def _reprovide_before_expiry(cls, jitter: float, info: ValidationInfo) -> float:
        ttl = info.data.get("kademlia_provider_ttl")
        interval = info.data.get("kademlia_reprovide_interval")
        if ttl is not None and interval is not None and interval + jitter >= ttl:
            raise ValueError(
                f"reprovide interval + jitter ({interval + jitter:g}s) must be shorter than "
                f"the provider ttl ({ttl:g}s), or records lapse between announcements"
            )
        return jitter
