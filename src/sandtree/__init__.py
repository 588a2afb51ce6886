"""sandtree: self-hosted sandboxes for AI agents whose images branch like git."""

__version__ = "0.1.0"

__all__ = ["__version__"]
