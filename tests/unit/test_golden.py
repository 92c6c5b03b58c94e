"""Render is pure and deterministic: each case's whole output equals its golden tree."""

from __future__ import annotations

import pytest

from golden_tree import CASES, GOLDEN, compare_tree, fixture_material, render_case, tree_of


@pytest.mark.parametrize("case", CASES)
def test_render_matches_golden_tree(case: str) -> None:
    _config, desired = render_case(case)
    compare_tree(GOLDEN / "tree" / case, tree_of(desired, fixture_material()))


@pytest.mark.parametrize("case", CASES)
def test_render_same_input_same_bytes(case: str) -> None:
    first = tree_of(render_case(case)[1], fixture_material())
    second = tree_of(render_case(case)[1], fixture_material())
    assert first == second


def test_golden_cases_cover_default_other_domain_and_two_models() -> None:
    assert {"default", "other-domain", "two-models"} <= set(CASES)
