"""Which dimension matters: Optuna's hyperparameter importances over a study's searched
dimensions, fANOVA and PED-ANOVA, on the COMPLETE trials of its Optuna storage, with the
guards that keep them honest (at least :data:`MIN_IMPORTANCE_TRIALS` trials; a dimension
whose range depends on another, such as ``surrogate_param``, kept out of fANOVA).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from snn.config import HEAD_ONLY, one_line
from study.folder import StudyFolder
from study.markdown import table

__all__ = ["MIN_IMPORTANCE_TRIALS", "Importance", "importances"]

MIN_IMPORTANCE_TRIALS = 10
"""Fewer COMPLETE trials than this get a sentence instead of importances."""


@dataclass(frozen=True)
class Importance:
    """Hyperparameter importances (normalised to sum 1) of the searched dimensions.

    Attributes:
        complete: COMPLETE trials with a finite objective in the Optuna study.
        pruned, failed: Trials left out as PRUNED and FAIL.
        trials: Trials the fANOVA importances rest on (those with every dimension assessed).
        fanova: ``FanovaImportanceEvaluator(seed=0)``, by dimension; empty without numbers.
        ped_anova: ``PedAnovaImportanceEvaluator()`` over all complete trials (Optuna's
            conditional PED-ANOVA: dimensions missing from some trials included).
        sentence: What the numbers rest on, or why there are none.
        notes: Dimensions left out, evaluators that refused, and why.
    """

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    trials: int = 0
    fanova: dict[str, float] = field(default_factory=dict)
    ped_anova: dict[str, float] = field(default_factory=dict)
    sentence: str = ""
    notes: tuple[str, ...] = ()

    def markdown_lines(self) -> list[str]:
        """The sentence, a table of the importances (most important first) and the notes."""
        lines = [self.sentence]
        if self.fanova or self.ped_anova:
            dims = sorted(set(self.fanova) | set(self.ped_anova),
                          key=lambda d: -self.fanova.get(d, self.ped_anova.get(d, 0)))
            lines += [""] + table(["dimension", "fANOVA", "PED-ANOVA"],
                                  [[d, _number(self.fanova.get(d)), _number(self.ped_anova.get(d))] for d in dims])
        if self.notes:
            lines += [""] + [f"* {n}." for n in self.notes]
        return lines


def _number(v: float | None) -> str:
    return "" if v is None else f"{v:.3f}"


def _evaluate(study, evaluator, **kwargs) -> dict[str, float]:
    """Optuna's ``get_param_importances`` without the warnings its evaluators give on few or
    degenerate trials (scipy's, numpy's, Optuna's experimental ones)."""
    from optuna.importance import get_param_importances

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return get_param_importances(study, evaluator=evaluator, **kwargs)


def importances(folder: StudyFolder) -> Importance:
    """The importances of the study's searched dimensions, or the sentence saying why there are none.

    An Optuna storage that is missing, damaged or unreachable, and an evaluator that refuses
    (ValueError, RuntimeError, ImportError), are a sentence or a note of the result, not an error.
    """
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator
    from optuna.trial import TrialState

    where = folder.optuna_shown  # its path, or its URL with no password: the analysis goes to MLflow
    try:
        study = folder.optuna_study()
    except FileNotFoundError:
        return Importance(sentence=f"No Optuna storage at `{where}`: no importances.")
    except KeyError:
        return Importance(sentence=f"The Optuna storage `{where}` holds no study `{folder.spec.name}`: no importances.")
    except Exception as e:  # a damaged or foreign file, a server that does not answer: the rest of the analysis stands
        return Importance(sentence=f"The Optuna storage `{where}` cannot be read ({type(e).__name__}: "
                                   f"{one_line(e)}): no importances.")
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values and math.isfinite(t.values[0])]
    base = dict(complete=len(complete), pruned=states[TrialState.PRUNED], failed=states[TrialState.FAIL])
    aside = " and ".join(f"{n} {w}" for n, w in ((base["pruned"], "pruned"), (base["failed"], "failed")) if n)
    aside = f" ({aside} left out)" if aside else ""
    dims = sorted({d for t in complete for d in t.distributions})
    if complete and not dims:
        return Importance(**base, sentence=f"The search preset `{folder.spec.search.preset}` searches no dimension: "
                                           f"there is nothing to rank.")
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        return Importance(**base, sentence=f"Importance needs at least {MIN_IMPORTANCE_TRIALS} complete trials; this "
                                           f"study has {len(complete)}{aside}.")
    if len({t.values[0] for t in complete}) == 1:
        return Importance(**base, sentence=f"Every one of the {len(complete)} complete trials reached the same "
                                           f"objective value: no dimension made a difference.")
    # fANOVA assesses a dimension with one range, on the trials that have every dimension it assesses
    notes = []
    dynamic = [d for d in dims if len({t.distributions[d] for t in complete if d in t.distributions}) > 1]
    for d in dynamic:
        notes.append(f"`{d}` is left out of fANOVA: its range differs between trials (it depends on another "
                     f"dimension), and fANOVA needs one range per dimension (Optuna refuses a dynamic search space "
                     f"there); PED-ANOVA assesses it")
    kept = [d for d in dims if d not in dynamic]
    used = [t for t in complete if all(d in t.params for d in kept)]
    numbers = {t.number for t in used}
    missing = {d for t in complete if t.number not in numbers for d in kept if d not in t.params}
    subset = (" with shortcut branches" if missing <= set(HEAD_ONLY) else " with every searched dimension") \
        if len(used) < len(complete) else ""
    multi = len(study.directions) > 1
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    fanova, ped = {}, {}
    if len(used) < MIN_IMPORTANCE_TRIALS:
        notes.append(f"fANOVA needs at least {MIN_IMPORTANCE_TRIALS} complete trials{subset}; this study has "
                     f"{len(used)} (of {len(complete)} complete)")
    elif kept:
        try:
            fanova = _evaluate(study, FanovaImportanceEvaluator(seed=0), params=kept,
                               target=(lambda t: t.values[0]) if multi else None)
        except (ValueError, RuntimeError, ImportError) as e:
            notes.append(f"fANOVA refused: {one_line(e, 300)}")
    try:
        ped = _evaluate(study, PedAnovaImportanceEvaluator(),
                        target=(lambda t: -t.values[0] if maximize else t.values[0]) if multi else None)
    except (ValueError, RuntimeError, ImportError) as e:
        notes.append(f"PED-ANOVA refused: {one_line(e, 300)}")
    parts = [f"fANOVA over {len(used)} trials{subset}" if subset else f"fANOVA over all {len(used)}"] if fanova else []
    if ped:
        parts.append(f"PED-ANOVA over all {len(complete)}, conditional dimensions included")
    objective = " (of test_acc, the first objective)" if multi else ""
    sentence = (f"Importances{objective} rest on the study's {len(complete)} complete trials{aside}: "
                + ("; ".join(parts) if parts else "none could be computed") + ".")
    return Importance(**base, trials=len(used) if fanova else 0, fanova={k: float(v) for k, v in fanova.items()},
                      ped_anova={k: float(v) for k, v in ped.items()}, sentence=sentence,
                      notes=tuple(notes))
