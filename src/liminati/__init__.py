"""liminati: a private, multi-user LLM service on one GPU host of a tailnet."""

__version__ = "0.1.0"
