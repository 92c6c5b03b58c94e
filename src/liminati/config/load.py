"""Reading the TOML file, merging command-line overrides, and turning pydantic errors into lines."""

from __future__ import annotations

import difflib
import re
import tomllib
from typing import Any

import pydantic
import tomli_w
from pydantic import BaseModel

from liminati.config.model import Config
from liminati.errors import ConfigError

DEFAULT_PATH = "/etc/liminati/liminati.toml"


def parse_config(text: str | None, source: str, overrides: dict[str, Any] | None = None) -> Config:
    """Validate TOML text (None: no file, embedded defaults) plus overrides; or ConfigError."""
    data: dict[str, Any] = {}
    if text is not None:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{source}: not valid TOML: {exc}"], source) from None
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    try:
        return Config.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ConfigError(error_lines(exc), source) from None


def error_lines(exc: pydantic.ValidationError) -> list[str]:
    """One line per bad value: the field, the value, and what is allowed."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        field = _dotted(loc)
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            lines.append(_unknown_key(loc))
        elif err["type"] == "missing":
            lines.append(f"{field}: missing; [{_dotted(loc[:-1])}] needs it when given")
        elif _NAMED.match(msg):
            # a cross-field check that names its own field, relative to where it ran
            lines.append(f"{_dotted(loc)}.{msg}" if loc else msg)
        elif not loc:
            lines.append(msg)
        else:
            lines.append(f"{field} = {_show(err.get('input'))}: {_humane(err['type'], msg)}")
    return lines


_NAMED = re.compile(r"^[A-Za-z_][\w.\[\]]* = ")


def _humane(kind: str, msg: str) -> str:
    if kind == "less_than_equal":
        return msg.replace("Input should be less than or equal to", "must be at most")
    if kind == "greater_than_equal":
        return msg.replace("Input should be greater than or equal to", "must be at least")
    if kind == "greater_than":
        return msg.replace("Input should be greater than", "must be greater than")
    if kind.endswith("_type") or kind.endswith("_parsing"):
        msg = msg.split(",")[0]
        msg = msg.replace("Input should be a valid integer", "must be an integer")
        msg = msg.replace("Input should be a valid tuple", "must be a list")
        msg = msg.replace("Input should be a valid", "must be a")
        return msg.replace("Input should be", "must be")
    if kind == "literal_error":
        return msg.replace("Input should be", "must be one of")
    return msg


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def _show(value: object) -> str:
    if isinstance(value, str) and len(value) > 60:
        return repr(value[:60]) + "..."
    text = repr(value)
    return text if len(text) <= 70 else text[:67] + "..."


def _unknown_key(loc: tuple[int | str, ...]) -> str:
    key = str(loc[-1])
    parent: type[BaseModel] | None = Config
    for part in loc[:-1]:
        if isinstance(part, int) or parent is None:
            continue
        field = parent.model_fields.get(part)
        parent = _model_of(field.annotation) if field else None
    where = f"in [{_dotted(loc[:-1])}]" if loc[:-1] else "at the top level"
    line = f"unknown key {key!r} {where}"
    if parent is not None:
        close = difflib.get_close_matches(key, list(parent.model_fields), n=1, cutoff=0.6)
        if close:
            return f"{line}; did you mean {close[0]!r}?"
        return f"{line}; allowed keys: {', '.join(parent.model_fields)}"
    return line


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def dump_config(config: Config) -> dict[str, Any]:
    """The effective config as plain data (no secrets live in the config)."""
    data: dict[str, Any] = config.model_dump(mode="json")
    return data


def to_toml(config: Config) -> str:
    return tomli_w.dumps(dump_config(config))
