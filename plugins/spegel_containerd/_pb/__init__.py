"""Generated protobuf modules for spegel's subset of containerd's API v1 (see ``protogen``)."""
