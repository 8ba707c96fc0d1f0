"""Optuna define-by-run search spaces and presets over λ₀, the λ schedule, the branch
placement and the surrogate gradient (Guo et al., NeurIPS 2024, Eq. 4 and 10)."""

from search_spaces._spaces import (
    FIXABLE,
    METHODS,
    NEURON_RANGES,
    SearchSpace,
    OPTIONAL,
    PRESETS,
    SEARCHED,
    SURROGATE_RANGES,
    all_branches,
    branch_choices,
    build_space,
    describe,
    dims_of,
    first_points,
    method_setting,
    paper_setting,
)

__all__ = [
    "FIXABLE", "METHODS", "NEURON_RANGES", "OPTIONAL", "SearchSpace", "PRESETS", "SEARCHED", "SURROGATE_RANGES", "all_branches", "branch_choices",
    "build_space", "describe", "dims_of", "first_points", "method_setting", "paper_setting",
]
