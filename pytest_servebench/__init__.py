"""pytest-servebench: evaluate served language models as pytest tests."""

__version__ = "0.1.0"
