"""JSON-RPC 2.0: the pure protocol (`protocol`), the method registry
(`registry`), schemas from contracts/ (`schema`) and the socket shell (`server`)."""
from .protocol import Call, Dispatcher, LineFramer, Limits
from .registry import Access, Registry

__all__ = ["Access", "Call", "Dispatcher", "LineFramer", "Limits", "Registry"]
