"""The three questions every claim answers beside its verdict: the controls a reader needs.

A verdict row compares ERSM with the baseline its rule names. Read alone, it cannot say what
does the work: the multiplicative gate (the layer trained with ``beta = 0``) or the paper's
energy regulariser. Nor does it say whether a comparison is won by construction. Each claim
notebook therefore ends with three kinds of comparison, computed here from the same per-seed,
per-image arrays as its verdict, with the same interval, and written into its results JSON
(``key_comparisons``):

- ``VS_DENSE``: ERSM paper against the backbone without the layer (what the verdicts test);
- ``REGULARISER``: ERSM paper against the same layer at ``beta = 0`` (the regulariser's own
  effect), and ``GATE``: the layer at ``beta = 0`` against dense (the gate's own effect; in
  claim 04, ``GATE_RANKING``: the ``beta = 0`` layer's mask ranking against its own magnitude);
- ``BUILT_IN``: where the method wins a comparison by construction, the control that removes
  the head start (claim 04: a mask multiplies the features, so in feature space the mask ranking
  must beat the *pre-mask* magnitude; the post-mask magnitude and input-space deletion do not
  share that head start).

These rows are reported, not verdicts: none of them changes a pre-registered verdict, and
they carry no verdict word. Orientation follows the claim: a positive difference always
favours the treatment in the claim's sense (higher accuracy, retained accuracy, sparsity,
LeRF area or AUROC; a *smaller* background gap).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ersm.experiments import deletion, mask_quality, occlusion
from ersm.experiments.common import CONTROLS, DENSE, PAPER, paired_seed_difference
from ersm.experiments.rankings import MAGNITUDE, MASK, MASKED_MAGNITUDE
from ersm.metrics.hierarchical import mean_of_seed_means, paired_rule_v2_interval
from ersm.study.verdicts import RULE_V2_INTERVAL, Claim, number_text

VS_DENSE = "ERSM vs dense"
REGULARISER = "regulariser: ERSM vs its beta=0"
GATE = "gate alone: beta=0 vs dense"
GATE_RANKING = "gate alone: beta=0 mask vs magnitude"  # claim 04: what the unregularised mask ranking does by itself
BUILT_IN = "built-in control"
QUESTIONS = (VS_DENSE, REGULARISER, GATE, GATE_RANKING, BUILT_IN)
PAPER_CONTROL = CONTROLS[PAPER]
SEED_T = "Student-t 95% interval over seeds of the per-seed difference, paired by seed"


def row(claim: str, question: str, treatment: str, baseline: str, metric: str, treatment_value: float,
        baseline_value: float, difference: float, lo: float, hi: float, interval: str) -> dict:
    """One comparison as the results JSON stores it (``question`` one of ``QUESTIONS``)."""
    if question not in QUESTIONS:
        raise ValueError(f"question={question!r} is not one of {QUESTIONS}")
    return {"claim": claim, "question": question, "treatment": treatment, "baseline": baseline, "metric": metric,
            "treatment_value": float(treatment_value), "baseline_value": float(baseline_value),
            "difference": float(difference), "lo": float(lo), "hi": float(hi), "interval": interval}


def from_claim(claim: str, question: str, verdict_row: Claim, treatment: str) -> dict:
    """A verdict row re-used as a comparison (same numbers, no verdict word)."""
    return row(claim, question, treatment, verdict_row.baseline_name, verdict_row.metric, verdict_row.ersm,
               verdict_row.baseline, verdict_row.difference, verdict_row.lo, verdict_row.hi, RULE_V2_INTERVAL)


def describe(rows: list[dict], digits: int = 2) -> str:
    """One line per comparison: question, treatment vs baseline, values, difference [95% CI]."""
    def f(value):
        return number_text(value, digits)
    return "\n".join(f"{r['question']:<32} {r['treatment']} {f(r['treatment_value'])} vs {r['baseline']} "
                     f"{f(r['baseline_value'])}: {'+' if (r['difference'] or 0) >= 0 else ''}{f(r['difference'])} "
                     f"[{f(r['lo'])}, {f(r['hi'])}]  ({r['metric']})" for r in rows)


# ----------------------------------------------------------------------------- claim 01
def accuracy_rows(frame: pd.DataFrame) -> list[dict]:
    """Claim 01: test accuracy (%), paired by seed on the seeds both families have (t over seeds,
    the interval of claim 01's rule). ``frame``: ``accuracy.accuracy_frame`` (model, seed, accuracy)."""
    pairs = ((VS_DENSE, PAPER, DENSE), (REGULARISER, PAPER, PAPER_CONTROL), (GATE, PAPER_CONTROL, DENSE))
    return [_seed_paired_accuracy(frame, question, treatment, baseline) for question, treatment, baseline in pairs]


def _seed_paired_accuracy(frame: pd.DataFrame, question: str, treatment: str, baseline: str) -> dict:
    for name in (treatment, baseline):
        if name not in set(frame["model"]):
            raise ValueError(f"frame has no rows for model {name!r}; its models are {sorted(set(frame['model']))}")
    pivot = frame.pivot(index="seed", columns="model", values="accuracy")[[treatment, baseline]].dropna()
    if len(pivot) < 2:
        raise ValueError(f"{treatment!r} and {baseline!r} share {len(pivot)} seed(s) in frame; a t-interval needs 2")
    shared = frame[frame["seed"].isin(pivot.index)]  # the seeds both families have (the added seeds pair dense and ERSM only)
    diff, lo, hi = paired_seed_difference(shared, "accuracy", treatment, baseline)
    return row("01 accuracy", question, treatment, baseline, f"test accuracy (%), seeds {list(pivot.index)} paired",
               pivot[treatment].mean(), pivot[baseline].mean(), diff, lo, hi, SEED_T)


# ----------------------------------------------------------------------------- claim 02
def sparsity_rows(claims: list[Claim]) -> list[dict]:
    """Claim 02: its verdict rows for ERSM paper already answer the questions (emergence and
    adaptivity are tested against the ``beta = 0`` layer; adaptivity also against dense's
    relative magnitude): re-used, without their verdict words."""
    rows = []
    for claim in claims:
        if not claim.claim.endswith(f"({PAPER})") and f"({PAPER} vs" not in claim.claim:
            continue
        question = REGULARISER if claim.baseline_name == PAPER_CONTROL else VS_DENSE
        rows.append(from_claim("02 sparsity", question, claim, PAPER))
    return rows


# ----------------------------------------------------------------------------- claim 03
def occlusion_rows(correct: dict, fractions: list[float], chance: float, gaps: dict | None = None,
                   primary_rho: float | None = None, n_boot: int = 2000) -> list[dict]:
    """Claim 03: retained accuracy (square, zero fill, dense's headroom shares) for the three
    pairs, and, where the background models were trained (``gaps`` from
    ``occlusion.background_gaps`` per rho) and a primary rho exists, the background-gap
    difference at that rho (oriented: ``gap(baseline) - gap(treatment)``, positive = smaller gap)."""
    rows = []
    for question, treatment, baseline in ((VS_DENSE, PAPER, DENSE), (REGULARISER, PAPER, PAPER_CONTROL), (GATE, PAPER_CONTROL, DENSE)):
        claim = occlusion.occlusion_claim(correct, fractions, treatment, baseline, n_boot=n_boot, chance=chance)
        rows.append(from_claim("03 occlusion", question, claim, treatment))
    if gaps and primary_rho is not None:
        for question, treatment, baseline in ((VS_DENSE, PAPER, DENSE), (REGULARISER, PAPER, PAPER_CONTROL), (GATE, PAPER_CONTROL, DENSE)):
            if treatment not in gaps[primary_rho] or baseline not in gaps[primary_rho]:
                continue  # a profile that trains fewer background families (ci) reports what it has
            base, treat, diff, lo, hi = occlusion.background_gap_difference(gaps, treatment, baseline, primary_rho, n_boot)
            rows.append(row("03 background", question, treatment, baseline,
                            f"background gap aligned - swapped (points) at rho={primary_rho:g}; difference gap(baseline) - gap(treatment)",
                            treat, base, diff, lo, hi, RULE_V2_INTERVAL))
    return rows


# ----------------------------------------------------------------------------- claim 04
def deletion_rows(per_seed: dict[str, list[dict]], n_boot: int) -> list[dict]:
    """Claim 04, feature-space LeRF area unless said otherwise (larger is better), rules v2 interval:

    - ``VS_DENSE``: ERSM paper pruned by its mask against dense pruned by its magnitude, where
      dense was scored under the primary protocol (same images; seeds paired by index);
    - ``REGULARISER``: the mask's advantage over the pre-mask magnitude, ERSM paper against its
      ``beta = 0`` layer (a difference of per-image differences), and the ``beta = 0`` mask
      ranking against its own magnitude;
    - ``BUILT_IN``: the mask ranking against the post-mask (masked) magnitude of the same model,
      and the mask ranking against the magnitude ranking in input space (zero fill), where the
      mask has no head start.
    """
    primary, rows = deletion.PRIMARY, []

    def stack(name, key):
        return deletion.seed_stack(per_seed[name], key)

    def add(claim, question, treatment, baseline, metric, a, b):
        diff, lo, hi = paired_rule_v2_interval(a, b, n_boot=n_boot, seed=0)
        rows.append(row(claim, question, treatment, baseline, metric, mean_of_seed_means(a), mean_of_seed_means(b),
                        diff, lo, hi, RULE_V2_INTERVAL))

    lerf = "area under the feature-space LeRF curve"
    paper_mask, paper_magnitude = stack(PAPER, (primary, MASK)), stack(PAPER, (primary, MAGNITUDE))
    if DENSE in per_seed and (primary, MAGNITUDE) in per_seed[DENSE][0]:
        add("04 deletion", VS_DENSE, f"{PAPER} (mask ranking)", f"{DENSE} (magnitude ranking)", lerf,
            paper_mask, stack(DENSE, (primary, MAGNITUDE)))
    if PAPER_CONTROL in per_seed:
        control_mask, control_magnitude = stack(PAPER_CONTROL, (primary, MASK)), stack(PAPER_CONTROL, (primary, MAGNITUDE))
        add("04 deletion", REGULARISER, f"{PAPER}: mask - magnitude", f"{PAPER_CONTROL}: mask - magnitude",
            f"{lerf}, mask ranking minus pre-mask magnitude ranking", paper_mask - paper_magnitude, control_mask - control_magnitude)
        add("04 deletion", GATE_RANKING, f"{PAPER_CONTROL} (mask ranking)", f"{PAPER_CONTROL} (magnitude ranking)", lerf,
            control_mask, control_magnitude)
    if (primary, MASKED_MAGNITUDE) in per_seed[PAPER][0]:
        add("04 deletion", BUILT_IN, f"{PAPER} (mask ranking)", f"{PAPER} (post-mask magnitude ranking)", lerf,
            paper_mask, stack(PAPER, (primary, MASKED_MAGNITUDE)))
    input_lerf = ("input", "least", "deletion", "zero")
    if (input_lerf, MASK) in per_seed[PAPER][0]:
        add("04 deletion", BUILT_IN, f"{PAPER} (mask ranking)", f"{PAPER} (magnitude ranking)",
            "area under the input-space LeRF curve (zero fill)", stack(PAPER, (input_lerf, MASK)), stack(PAPER, (input_lerf, MAGNITUDE)))
    return rows


# ----------------------------------------------------------------------------- claim 05
def mask_quality_rows(scores: dict[str, dict[str, np.ndarray]], n_boot: int) -> list[dict]:
    """Claim 05, per-pixel AUROC against the digit mask (rules v2 interval, images with a NaN in
    either map dropped, as the verdict rows do): the paper mask against dense's magnitude and
    Grad-CAM, against the ``beta = 0`` layer's mask, and that mask against dense's magnitude."""
    pairs = ((VS_DENSE, f"{PAPER} mask", "magnitude (dense)"), (VS_DENSE, f"{PAPER} mask", "Grad-CAM (dense)"),
             (REGULARISER, f"{PAPER} mask", f"{PAPER_CONTROL} mask"), (GATE, f"{PAPER_CONTROL} mask", "magnitude (dense)"))
    rows = []
    for question, treatment, baseline in pairs:
        claim = mask_quality.quality_claims(scores, treatment, [baseline], n_boot)[0][0]
        rows.append(from_claim("05 mask quality", question, claim, treatment))
    return rows
