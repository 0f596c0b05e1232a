"""The spegel test kit: a pytest plugin, in-memory fakes and conformance suites."""
