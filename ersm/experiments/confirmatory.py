"""Rules v3's primary rows and overall verdicts, one claim at a time (``docs/rules.md#rules-v3-confirmatory``).

The confirmatory notebooks call these beside the exploratory rows; each function takes the
same per-seed, per-image arrays that the claim modules compute, and returns a
:class:`PrimaryVerdict`: the claim's ``m`` primary rows, each read at the Bonferroni level
``1 - 0.05 / m`` (:func:`level`), and the claim's overall verdict (``verdicts.overall_verdict``:
SUPPORTED if every row is, NOT SUPPORTED if any row is, else INCONCLUSIVE). Both questions of
rules v3 are primary in every claim: ERSM paper against dense (``VS_DENSE``), and ERSM paper
against the same layer at ``beta = 0`` (``REGULARISER``). Claim 04 replaces the comparison
against dense with the two controls the method does not win by construction (``BUILT_IN``).

Intervals are those of rules v2 at the adjusted level: the seed-level t-interval of the
paired difference (claim 01 and the adaptivity rows of 02) or the hull of the two-level
bootstrap and that t-interval (every image-level row). Orientation: a positive difference
favours ERSM paper. ``converged`` says which families converged under rules v3
(``ersm.study.convergence.assess(..., masks=True)``): ``True``/``False`` for all, or a dict family ->
bool. A row that reads a family that did not converge becomes ``INCONCLUSIVE (not converged)``,
numbers kept; the overall verdict is then computed from the rows as they stand (``_result``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ersm.checks import check_count
from ersm.experiments.common import CONTROLS, DENSE, PAPER
from ersm.experiments.controls import BUILT_IN, REGULARISER, VS_DENSE
from ersm.metrics.hierarchical import mean_of_seed_means, paired_rule_v2_interval, seed_t_interval
from ersm.study.verdicts import (INCONCLUSIVE, NOT_CONVERGED, NOT_SUPPORTED, SUPPORTED, Claim, check_n_boot, non_inferiority,
                           overall_verdict, superiority)

CONTROL = CONTROLS[PAPER]
FAMILY_ALPHA = 0.05  # two-sided, per claim and backbone
RULES = "rules v3 (docs/rules.md#rules-v3-confirmatory)"


def level(m: int) -> float:
    """The two-sided level of each of ``m`` primary rows: ``1 - 0.05 / m`` (Bonferroni)."""
    check_count("m", m, 1, " (the number of primary rows)")
    return 1 - FAMILY_ALPHA / m


@dataclass
class PrimaryVerdict:
    """A claim's primary rows under rules v3, with the question each answers, and its overall verdict."""

    claim: str
    rows: list[Claim]
    questions: list[str]
    overall: str

    def lines(self) -> str:
        """What a notebook prints: one line per row, then the overall verdict."""
        out = [f"{q:<34} {r.claim}: {r.difference:+.3f} [{r.lo:.3f}, {r.hi:.3f}] -> {r.verdict}"
               for q, r in zip(self.questions, self.rows)]
        return "\n".join(out + [f"{self.claim}, overall (rules v3): {self.overall}"])


def _result(claim: str, rows: list[tuple[str, Claim, tuple[str, ...]]], converged) -> PrimaryVerdict:
    """Gate each row by the families it reads (rules v3: every verdict that reads a family that
    did not converge is INCONCLUSIVE (not converged), numbers kept), then the overall verdict:
    NOT SUPPORTED if a row that stands is; SUPPORTED if every row is; else INCONCLUSIVE, or
    INCONCLUSIVE (not converged) when a gated row is what keeps it from SUPPORTED."""
    status = _convergence(converged, {family for _, _, families in rows for family in families})
    claims = [row if all(status[f] for f in families) else dataclasses.replace(row, verdict=NOT_CONVERGED)
              for _, row, families in rows]
    verdicts = [c.verdict for c in claims]
    overall = overall_verdict(verdicts)
    if overall == INCONCLUSIVE and NOT_CONVERGED in verdicts and all(v in (SUPPORTED, NOT_CONVERGED) for v in verdicts):
        overall = NOT_CONVERGED
    return PrimaryVerdict(claim, claims, [q for q, _, _ in rows], overall)


def _convergence(converged, families: set[str]) -> dict[str, bool]:
    """``converged``: True or False for every family, or a mapping family -> bool naming each one read."""
    if isinstance(converged, bool):
        return {family: converged for family in families}
    if not isinstance(converged, dict) or not all(isinstance(v, bool) for v in converged.values()):
        raise ValueError(f"converged={converged!r} must be True, False or a dict family -> bool")
    missing = sorted(families - set(converged))
    if missing:
        raise ValueError(f"converged has no entry for {missing}; the rows read {sorted(families)}")
    return {family: converged[family] for family in families}


def _seed_paired(pivot: pd.DataFrame, baseline: str, m: int) -> tuple[pd.DataFrame, tuple[float, float, float]]:
    """ERSM paper and ``baseline`` on every seed of ``pivot`` (seed x family), and the Student-t interval
    at level ``level(m)`` of their per-seed difference; both must hold every seed (at least 2)."""
    pair = pivot[[PAPER, baseline]].dropna()
    if len(pair) != len(pivot) or len(pair) < 2:
        raise ValueError(f"{PAPER!r} and {baseline!r} must share every seed (at least 2); they share {len(pair)} of {len(pivot)}")
    return pair, seed_t_interval((pair[PAPER] - pair[baseline]).to_numpy(), level(m))


def _rule(m: int, what: str, interval: str) -> str:
    return f"{RULES}: {what}; {interval} at {100 * level(m):.2f}% (Bonferroni over the claim's m = {m} primary rows)"


def _hull(a, b, n_boot: int, m: int, statistic=mean_of_seed_means) -> tuple[float, float, float]:
    return paired_rule_v2_interval(a, b, statistic, n_boot=n_boot, seed=0, level=level(m))


def _without_headroom(claim: str, baseline: str, metric: str, why: str) -> Claim:
    """A row that rules v3 leaves INCONCLUSIVE before any number: dense has no headroom on validation."""
    nan = float("nan")
    return Claim(claim=claim, metric=metric, baseline_name=baseline, baseline=nan, ersm=nan, difference=nan, lo=nan, hi=nan,
                 rule=f"{RULES}: INCONCLUSIVE ({why})", verdict=INCONCLUSIVE)


HULL = "hull of the paired two-level bootstrap (shared image draws) and the seed-level t-interval"
SEED_T = "Student-t interval over seeds of the paired per-seed difference"


# ----------------------------------------------------------------------------- 01 accuracy
def accuracy(frame: pd.DataFrame, margin: float = 1.0, converged: bool = True) -> PrimaryVerdict:
    """P1 paper vs dense, P2 paper vs ``beta = 0``: non-inferiority of test accuracy (%) at
    ``margin`` points, paired by seed. ``frame``: ``model, seed, accuracy`` (``accuracy.accuracy_frame``)."""
    m, rows = 2, []
    pivot = frame.pivot(index="seed", columns="model", values="accuracy")
    for question, baseline in ((VS_DENSE, DENSE), (REGULARISER, CONTROL)):
        if PAPER not in pivot or baseline not in pivot:
            raise ValueError(f"frame must hold {PAPER!r} and {baseline!r}; it holds {sorted(pivot.columns)}")
        pair, (diff, lo, hi) = _seed_paired(pivot, baseline, m)
        rows.append((question, Claim(
            claim=f"accuracy is preserved ({PAPER} vs {baseline})", metric="test accuracy (%), mean over seeds",
            baseline_name=baseline, baseline=float(pair[baseline].mean()), ersm=float(pair[PAPER].mean()),
            difference=diff, lo=lo, hi=hi, rule=_rule(m, f"non-inferiority at {margin:g} points", SEED_T),
            verdict=non_inferiority(lo, hi, margin)), (PAPER, baseline)))
    return _result("01 accuracy", rows, converged)


# ----------------------------------------------------------------------------- 02 sparsity
def sparsity(per_image: dict, frame: pd.DataFrame, magnitude: pd.DataFrame, n_boot: int,
             converged: bool = True) -> PrimaryVerdict:
    """P1 emergence (sparsity ``1 - k`` above ``beta = 0``'s, hull), P2 adaptivity (the across-image
    CV of ``k`` above ``beta = 0``'s, seed t), P3 adaptivity above dense's relative magnitude.
    Inputs as ``sparsity.emergence_claim`` and ``sparsity.adaptivity_claims``; P1 keeps the
    degeneracy veto (NOT SUPPORTED if the paper mask is degenerate in any seed)."""
    check_n_boot(n_boot)
    m = 3
    a, b = (np.asarray(per_image[name], dtype=np.float64) for name in (PAPER, CONTROL))
    diff, lo, hi = _hull(a, b, n_boot, m)
    paper_rows = frame[frame["model"] == PAPER]
    degenerate = sorted(paper_rows.loc[paper_rows["degenerate"].astype(bool), "seed"].tolist())
    rows = [(REGULARISER, Claim(
        claim=f"sparsity emerges without a budget ({PAPER} vs {CONTROL})",
        metric="sparsity 1 - kept mass (k = mean m / max m per image), mean over seeds and images",
        baseline_name=CONTROL, baseline=float(mean_of_seed_means(b)), ersm=float(mean_of_seed_means(a)),
        difference=diff, lo=lo, hi=hi,
        rule=_rule(m, "superiority; NOT SUPPORTED if the paper mask is degenerate in any seed"
                      + (f" (it is in seeds {degenerate})" if degenerate else " (it is in none)"), HULL),
        verdict=NOT_SUPPORTED if degenerate else superiority(lo, hi)), (PAPER, CONTROL))]
    labels = list(pd.unique(magnitude["model"]))
    if len(labels) != 1:
        raise ValueError(f"magnitude holds the models {labels}; it must hold one (the dense baseline)")
    cv = pd.concat([frame[["model", "seed", "kept_mass_cv"]], magnitude[["model", "seed", "kept_mass_cv"]]])
    pivot = cv.pivot(index="seed", columns="model", values="kept_mass_cv")
    for question, baseline in ((REGULARISER, CONTROL), (VS_DENSE, labels[0])):
        pair, (diff, lo, hi) = _seed_paired(pivot, baseline, m)
        rows.append((question, Claim(
            claim=f"sparsity adapts to the input ({PAPER} vs {baseline})",
            metric="across-image CV of the kept mass k, per seed, mean over seeds",
            baseline_name=baseline, baseline=float(pair[baseline].mean()), ersm=float(pair[PAPER].mean()),
            difference=diff, lo=lo, hi=hi, rule=_rule(m, "superiority", SEED_T), verdict=superiority(lo, hi)),
            (PAPER, CONTROL if baseline == CONTROL else DENSE)))
    return _result("02 sparsity", rows, converged)


# ----------------------------------------------------------------------------- 03a occlusion
def occlusion(correct: dict, fractions: list[float], shares: list[float], n_boot: int,
              converged: bool = True) -> PrimaryVerdict:
    """P1 paper vs dense, P2 paper vs ``beta = 0``: superiority of retained accuracy (square
    patches, zero fill) averaged over ``shares``, the headroom shares rules v3 chooses on
    validation images. No share: both rows INCONCLUSIVE (no headroom). ``correct`` as
    ``occlusion.occlusion_correctness``."""
    from ersm.experiments.occlusion import PRIMARY as SQUARE_ZERO, _retained_arms, retained_accuracy, share_text

    check_n_boot(n_boot)
    m, rows = 2, []
    for question, baseline in ((VS_DENSE, DENSE), (REGULARISER, CONTROL)):
        claim = f"occlusion robustness ({PAPER} vs {baseline})"
        if not shares:
            rows.append((question, _without_headroom(claim, baseline, "retained accuracy: no share qualifies on validation",
                                                     "no headroom on validation"), (PAPER, baseline)))
            continue
        a, b = _retained_arms(correct, fractions, (PAPER, baseline), *SQUARE_ZERO, shares)
        diff, lo, hi = _hull(a, b, n_boot, m, retained_accuracy)
        rows.append((question, Claim(
            claim=claim, metric=f"retained accuracy (% of clean), square patches, zero fill, at {share_text(shares)} "
                                f"occluded (the shares where dense keeps 10 points above chance on validation)",
            baseline_name=baseline, baseline=float(retained_accuracy(*b)), ersm=float(retained_accuracy(*a)),
            difference=diff, lo=lo, hi=hi, rule=_rule(m, "superiority", HULL), verdict=superiority(lo, hi)),
            (PAPER, baseline)))
    return _result("03a occlusion", rows, converged)


# ----------------------------------------------------------------------------- 03b background
def background(gaps: dict | None, n_boot: int, converged: bool = True) -> PrimaryVerdict:
    """P1 paper vs dense, P2 paper vs ``beta = 0``: a smaller background gap (aligned minus
    swapped accuracy, ``[S, N]`` per family at the primary rho; ``occlusion.background_gaps``),
    oriented ``gap(baseline) - gap(paper)``. ``gaps=None`` (no rho qualified on validation):
    both rows INCONCLUSIVE (saturated)."""
    check_n_boot(n_boot)
    m, rows = 2, []
    for question, baseline in ((VS_DENSE, DENSE), (REGULARISER, CONTROL)):
        claim = f"less background reliance ({PAPER} vs {baseline})"
        if gaps is None:
            rows.append((question, _without_headroom(claim, baseline, "background gap: no rho qualifies on validation",
                                                     "saturated"), (PAPER, baseline)))
            continue
        base, paper = (np.asarray(gaps[name], dtype=np.float64) for name in (baseline, PAPER))
        diff, lo, hi = _hull(base, paper, n_boot, m)
        rows.append((question, Claim(
            claim=claim, metric="background gap, aligned - swapped test accuracy (points); difference gap(baseline) - gap(ERSM)",
            baseline_name=baseline, baseline=float(mean_of_seed_means(base)), ersm=float(mean_of_seed_means(paper)),
            difference=diff, lo=lo, hi=hi, rule=_rule(m, "superiority (a smaller gap)", HULL), verdict=superiority(lo, hi)),
            (PAPER, baseline)))
    return _result("03b background", rows, converged)


# ----------------------------------------------------------------------------- 04 deletion
def deletion(per_seed: dict[str, list[dict]], n_boot: int, converged: bool = True) -> PrimaryVerdict:
    """The energy ranking of ERSM paper (importance ``-E``), LeRF area, per-image differences:
    P1 against its post-mask magnitude (feature space), P2 against its magnitude ranking in input
    space (zero fill), P3 the regulariser: paper's energy-minus-post-mask difference against that
    of its ``beta = 0`` layer. ``per_seed[name]``: one ``{(protocol, ranking): area [N]}`` per seed."""
    from ersm.experiments.deletion import PRIMARY as FEATURE_LERF, seed_stack
    from ersm.experiments.rankings import ENERGY, MAGNITUDE, MASKED_MAGNITUDE

    check_n_boot(n_boot)
    m, input_lerf = 3, ("input", "least", "deletion", "zero")

    def stack(name, protocol, ranking):
        return seed_stack(per_seed[name], (protocol, ranking))

    energy, post = stack(PAPER, FEATURE_LERF, ENERGY), stack(PAPER, FEATURE_LERF, MASKED_MAGNITUDE)
    comparisons = (
        (BUILT_IN, "energy ranking beats the post-mask magnitude (feature-space LeRF)", "post-mask magnitude ranking",
         energy, post, (PAPER,)),
        (BUILT_IN, "energy ranking beats the magnitude ranking in input space (LeRF, zero fill)", "magnitude ranking",
         stack(PAPER, input_lerf, ENERGY), stack(PAPER, input_lerf, MAGNITUDE), (PAPER,)),
        (REGULARISER, "the energy ranking's lead over the post-mask magnitude beats that of beta=0",
         f"{CONTROL}: energy - post-mask magnitude", energy - post,
         stack(CONTROL, FEATURE_LERF, ENERGY) - stack(CONTROL, FEATURE_LERF, MASKED_MAGNITUDE), (PAPER, CONTROL)),
    )
    rows = []
    for question, text, baseline, a, b, read in comparisons:
        diff, lo, hi = _hull(a, b, n_boot, m)
        rows.append((question, Claim(
            claim=f"{text} ({PAPER})", metric="area under the LeRF curve (probability of the predicted class)",
            baseline_name=baseline, baseline=float(mean_of_seed_means(b)), ersm=float(mean_of_seed_means(a)),
            difference=diff, lo=lo, hi=hi, rule=_rule(m, "superiority", HULL), verdict=superiority(lo, hi)), read))
    return _result("04 deletion", rows, converged)


# ----------------------------------------------------------------------------- 05 mask quality
def mask_quality(scores: dict[str, dict[str, np.ndarray]], n_boot: int, converged: bool = True) -> PrimaryVerdict:
    """Per-pixel AUROC of the paper mask above P1 dense's magnitude, P2 dense's Grad-CAM and P3
    the ``beta = 0`` mask (``scores[map]["pixel AUROC"]``: ``[S, N]``; images with a NaN in any seed
    of either map are dropped per row)."""
    from ersm.experiments.mask_quality import PRIMARY_METRIC, both_finite

    check_n_boot(n_boot)
    m, rows = 3, []
    a_all = np.asarray(scores[f"{PAPER} mask"][PRIMARY_METRIC], dtype=np.float64)
    for question, baseline in ((VS_DENSE, "magnitude (dense)"), (VS_DENSE, "Grad-CAM (dense)"), (REGULARISER, f"{CONTROL} mask")):
        b_all = np.asarray(scores[baseline][PRIMARY_METRIC], dtype=np.float64)
        keep = both_finite(a_all, b_all)
        a, b = a_all[:, keep], b_all[:, keep]
        diff, lo, hi = _hull(a, b, n_boot, m)
        rows.append((question, Claim(
            claim=f"masks isolate the object ({PAPER} mask vs {baseline})",
            metric=f"per-pixel AUROC against the digit mask ({int(keep.sum())} of {keep.size} images)",
            baseline_name=baseline, baseline=float(mean_of_seed_means(b)), ersm=float(mean_of_seed_means(a)),
            difference=diff, lo=lo, hi=hi, rule=_rule(m, "superiority", HULL), verdict=superiority(lo, hi)),
            (PAPER, CONTROL if baseline == f"{CONTROL} mask" else DENSE)))
    return _result("05 mask quality", rows, converged)
