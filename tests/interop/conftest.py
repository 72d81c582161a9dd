"""Fixtures of the interop suite; the helpers are in interop_helpers.py (a module name of its own, as conftest.py
is not unique in this test tree)."""

from interop_helpers import origin, our_cluster

__all__ = ["origin", "our_cluster"]
