"""The ``spegel`` command line."""
