"""steelforge: raw text to a released, evaluated chat model, one tested toolkit."""

__version__ = "0.1.0"
