"""OCI wire facts: references, digests, media types."""
