"""aal-core: keeps AI workloads alive on small unified-memory boards.

The daemon is `aal_core.__main__` (console script `aal-core`); the client
library is `aal_core.client` (console script `aalctl`).
"""
__version__ = "0.1.0"
__all__ = ["__version__"]
