"""Configuration: the schema with embedded defaults, and loading it from TOML."""

from liminati.config.load import DEFAULT_PATH, dump_config, error_lines, parse_config, to_toml
from liminati.config.model import Config, Model, ServiceUser

__all__ = [
    "DEFAULT_PATH",
    "Config",
    "Model",
    "ServiceUser",
    "dump_config",
    "error_lines",
    "parse_config",
    "to_toml",
]
