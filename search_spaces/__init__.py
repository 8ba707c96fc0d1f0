"""Optuna define-by-run search spaces and presets over λ₀, the λ schedule, the branch
placement and the surrogate gradient (Guo et al., NeurIPS 2024, Eq. 4 and 10), and the one
declaration of each searchable dimension (:data:`DIMENSIONS`)."""

from search_spaces._dims import (
    DIMENSIONS,
    Dimension,
    all_branches,
    branch_choices,
    dimension,
    fixable,
    optional,
    perturbed,
    register,
    searched,
    spelled,
)
from search_spaces._spaces import (
    METHODS,
    PRESETS,
    SearchSpace,
    build_space,
    describe,
    dims_of,
    first_points,
    method_setting,
    paper_setting,
)

__all__ = [
    "DIMENSIONS", "Dimension", "METHODS", "PRESETS", "SearchSpace", "all_branches",
    "branch_choices", "build_space", "describe", "dimension", "dims_of", "first_points", "fixable", "method_setting",
    "optional", "paper_setting", "perturbed", "register", "searched", "spelled",
]
