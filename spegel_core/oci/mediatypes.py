"""Media types of manifests and a sniffer for manifests stored without one."""

from __future__ import annotations

import json

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_V1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST,
                            DOCKER_MANIFEST_V1})

#: The annotation of an index entry that names its tag (OCI image layout).
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
#: The annotation containerd writes (and ``ctr images import`` reads) with the full reference.
CONTAINERD_NAME_ANNOTATION = "io.containerd.image.name"

# Manifests are small; anything larger is refused as a manifest (the spec suggests 4 MiB).
MAX_MANIFEST_SIZE = 4 * 1024 * 1024


def sniff_manifest_type(data: bytes) -> str | None:
    """Media type of a manifest from its JSON, or None if it is not a manifest."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    declared = doc.get("mediaType")
    if isinstance(declared, str) and declared in MANIFEST_TYPES:
        return declared
    if doc.get("schemaVersion") == 1 and "fsLayers" in doc:
        return DOCKER_MANIFEST_V1
    if isinstance(doc.get("manifests"), list):
        return OCI_INDEX
    if isinstance(doc.get("layers"), list) and isinstance(doc.get("config"), dict):
        return OCI_MANIFEST
    return None
