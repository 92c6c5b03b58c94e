"""Render: config + material -> the desired host, as data. Pure: no I/O, no clock, no randomness."""

from liminati.render.model import (
    Desired,
    DirSpec,
    FileSpec,
    Material,
    Policy,
    UnitRef,
    UnitSpec,
    WebuiConnections,
)
from liminati.render.stack import SECRET_NAMES, build_desired

__all__ = [
    "SECRET_NAMES",
    "Desired",
    "DirSpec",
    "FileSpec",
    "Material",
    "Policy",
    "UnitRef",
    "UnitSpec",
    "WebuiConnections",
    "build_desired",
]
