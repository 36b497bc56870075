"""Composite trees: group drivers under one name, and share a node in two places with a proxy."""

from .client import CompositeClient
from .driver import Composite, Proxy, resolve_refs

__all__ = ["Composite", "CompositeClient", "Proxy", "resolve_refs"]
