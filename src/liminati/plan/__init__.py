"""Plan: desired state + facts about the host -> typed actions with reasons. Pure."""

from liminati.plan.build import Facts, build_plan, file_diff
from liminati.plan.manifest import Manifest, sha256
from liminati.plan.material import Existing, Generators, Prepared, prepare_material
from liminati.plan.model import Action, Change, Plan

__all__ = [
    "Action",
    "Change",
    "Existing",
    "Facts",
    "Generators",
    "Manifest",
    "Plan",
    "Prepared",
    "build_plan",
    "file_diff",
    "prepare_material",
    "sha256",
]
