"""Claim 4: ranking tokens by learned energy beats ranking by feature magnitude in deletion tests.

Protocols (`docs/protocols.md#deletion-and-insertion`; RISE, Petsiuk et al. 2018; ROAD, Rong et al. 2022): tokens of the
masked stage are removed step by step, 0 to 100%, in feature space (zeroed, then the rest of
the network) and in input space (the matching image patches, zero or blur fill, and ROAD's
noisy linear imputation as a control). Two orders: least relevant first (LeRF, the paper's
pruning reading: the predicted class should survive, higher area is better) and most relevant
first (MoRF, RISE deletion: lower is better); plus RISE insertion (higher is better). The
tracked quantity is the softmax probability of the class predicted on the clean image, and a
curve's score is its trapezoid area.

Rules v2 (`docs/rules.md#04-deletion-v2`) as amended (v2.4, ``ersm.study.rules``; v2 was written before the ``full`` run, its amendments after its test scores existed). Two primary rankings, each
against the pre-mask feature magnitude (``rankings.MAGNITUDE``) of the same ERSM model: the
total energy (``rankings.ENERGY``, importance ``-E``, the paper's "energy ranking") and the mask
(``rankings.MASK``, low unary energy first). Protocol: feature space, LeRF (a larger area is
better). Per seed and test image the area with the ranking minus the area with the magnitude
ranking; the rules v2 interval (``paired_rule_v2_interval`` on ``[S, N]`` areas: seeds paired
by row, the same images in every column); superiority, one verdict row per ranking
(``deletion_claims``). Every other protocol is reported with the same interval, oriented so
that a positive difference favours the ERSM ranking (``comparison_frame``); a protocol run on
one seed only (ROAD) cannot have it and reports the image bootstrap of that seed, said so in its
``interval`` column; no verdict reads it. With the same substrate, MoRF insertion visits the
same token sets as LeRF deletion in reverse order when no two scores tie and every step removes
a whole number of tokens (``k * h * w / steps``, true for the 12x12 grid of ``ci``, not for the
14x14 grid of ``full``), so their areas then coincide (the trapezoid rule is symmetric); both
rows are kept because RISE and the pruning reading name them differently, and ties (Grad-CAM's
zeros) or rounding make them differ. The masked-feature magnitude (``rankings.MASKED_MAGNITUDE``)
is reported as the control for the head start the mask ranking has in feature space; random,
the dense model's magnitude and Grad-CAM are reported baselines.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ersm.experiments import common
from ersm.experiments.rankings import ENERGY, MAGNITUDE, MASK, StageView
from ersm.metrics.deletion import feature_curves, input_curves, trapezoid_auc
from ersm.metrics.hierarchical import mean_of_seed_means, paired_rule_v2_interval
from ersm.metrics.stats import paired_bootstrap
from ersm.checks import check_units
from ersm.study.verdicts import MIN_UNITS, RULE_V2_INTERVAL, Claim, check_distinct, check_n_boot, superiority

# (space, order, mode, fill) -> +1 if a larger area is better, -1 if smaller is better
PROTOCOLS = {
    ("feature", "least", "deletion", "zero"): +1,
    ("feature", "most", "deletion", "zero"): -1,
    ("feature", "most", "insertion", "zero"): +1,
    ("input", "least", "deletion", "zero"): +1,
    ("input", "most", "deletion", "zero"): -1,
    ("input", "least", "deletion", "blur"): +1,
    ("input", "most", "deletion", "blur"): -1,
    ("input", "most", "insertion", "blur"): +1,
}
PRIMARY = ("feature", "least", "deletion", "zero")
ROAD = {("input", "least", "deletion", "road"): +1, ("input", "most", "deletion", "road"): -1}
PRIMARY_RANKINGS = (ENERGY, MASK)  # each against MAGNITUDE: one verdict row each, in this order
COMPARED = {MASK: "mask", ENERGY: "energy"}  # ranking -> its short name in comparison_frame's columns
RANKING_NAMES = {ENERGY: "total-energy (-E) ranking", MASK: "mask (unary-energy) ranking"}


def configs(base, params: dict, selected: dict[str, dict]) -> dict[str, list]:
    """What notebook 04 trains: dense and every ERSM variant with its ``beta = 0`` control at
    ``SEEDS`` and their ``selected`` settings."""
    return common.family(base, params["SEEDS"], common.WITHOUT_CUTOUT, selected)

def protocol_name(protocol: tuple) -> str:
    space, order, mode, fill = protocol
    reading = {"least": "LeRF", "most": "MoRF"}[order] if mode == "deletion" else "insertion"
    return f"{space} {reading} ({fill})"


def areas(model, view: StageView, images: torch.Tensor, protocols: dict, steps: int, n_input: int, rankings=None) -> dict:
    """``{(protocol, ranking): area [N]}`` for one model; input space uses the first ``n_input`` images."""
    out = {}
    for protocol in protocols:
        space, order, mode, fill = protocol
        for name in rankings or view.rankings:
            scores = view.rankings[name]
            if space == "feature":
                curves = feature_curves(view.head, view.features, scores, view.predicted, steps=steps, order=order, mode=mode)
            else:
                n = min(n_input, len(images))
                curves = input_curves(model, images[:n], scores[:n], view.predicted[:n], steps=steps, order=order, mode=mode, fill=fill)
            out[protocol, name] = trapezoid_auc(curves).numpy()
    return out


def mean_curves(model, view: StageView, protocol: tuple, steps: int) -> dict:
    """Feature-space curves ``{ranking: [N, steps + 1]}`` for a figure."""
    _, order, mode, _ = protocol
    return {name: feature_curves(view.head, view.features, scores, view.predicted, steps=steps, order=order, mode=mode).numpy()
            for name, scores in view.rankings.items()}


def seed_mean(per_seed: list[dict], key) -> np.ndarray:
    return np.mean([areas_of_seed[key] for areas_of_seed in per_seed], axis=0)


def seed_stack(per_seed: list[dict], key) -> np.ndarray:
    """``float [S, N]``: the areas of ``key`` (``(protocol, ranking)``), one row per seed in list order."""
    return np.stack([np.asarray(areas_of_seed[key], dtype=np.float64) for areas_of_seed in per_seed])


def check_seed_areas(per_seed, name: str, keys=(), min_seeds: int = 1) -> None:
    """``per_seed``: a list of at least ``min_seeds`` ``{(protocol, ranking): area [N]}`` dicts, one
    per seed, each holding every one of ``keys`` as a finite array over the same ``N >= 2`` images."""
    if not isinstance(per_seed, (list, tuple)) or not per_seed:
        raise ValueError(f"{name} must be a non-empty list of {{(protocol, ranking): area [N]}} dicts, one per seed; "
                         f"got {name}={per_seed!r:.80}")
    if len(per_seed) < min_seeds:
        raise ValueError(f"{name} has {len(per_seed)} seed(s); the rules v2 interval needs at least {min_seeds}")
    for index, seed_areas in enumerate(per_seed):
        if not isinstance(seed_areas, dict):
            raise ValueError(f"{name}[{index}] must be a dict {{(protocol, ranking): area [N]}}, got {type(seed_areas).__name__}")
        for key in keys:
            if key not in seed_areas:
                raise ValueError(f"{name}[{index}] has no area for {key!r} (is it an ERSM model's?); "
                                 f"its rankings for that protocol are {sorted(r for p, r in seed_areas if p == key[0])}")
    for key in keys:
        n = check_units(f"{name}[0][{key!r}]", per_seed[0][key]).size
        for index, seed_areas in enumerate(per_seed[1:], start=1):
            check_units(f"{name}[{index}][{key!r}]", seed_areas[key], n=n)


def comparison_frame(per_seed: dict[str, list[dict]], protocols: dict, n_boot: int) -> pd.DataFrame:
    """Mean area per (model, protocol, ranking) and, where a model has them, the mask and the
    total-energy rankings against magnitude, oriented (``sign * (ranking - magnitude)``, positive
    favours the ERSM ranking), with their interval: the rules v2 interval where the model has two
    or more seeds, else (one seed, e.g. ROAD) the paired image bootstrap of that seed, as the
    ``interval`` column says. Reported, not a verdict.

    Refuses (``ValueError``) an empty ``per_seed`` or ``protocols``, a sign other than +1/-1,
    a model without seeds, a ranking that some seeds lack, and, where the mask or energy
    ranking is there, a missing magnitude ranking, unpaired or too few images and NaN areas.
    """
    check_n_boot(n_boot)
    if not isinstance(per_seed, dict) or not per_seed:
        raise ValueError(f"per_seed must be a non-empty dict {{model: [per-seed areas]}}, got per_seed={per_seed!r:.80}")
    if not isinstance(protocols, dict) or not protocols:
        raise ValueError(f"protocols must be a non-empty dict {{protocol: +1 or -1}}, got protocols={protocols!r}")
    for protocol, sign in protocols.items():
        if isinstance(sign, bool) or sign not in (1, -1):
            raise ValueError(f"protocols[{protocol!r}]={sign!r} must be +1 (larger area is better) or -1 (smaller is better)")
    for model_name, seeds in per_seed.items():
        check_seed_areas(seeds, f"per_seed[{model_name!r}]")
        for protocol in protocols:
            keys = [(p, r) for (p, r) in seeds[0] if p == protocol]
            if any(r in COMPARED for _, r in keys):
                keys.append((protocol, MAGNITUDE))
            check_seed_areas(seeds, f"per_seed[{model_name!r}]", list(dict.fromkeys(keys)))
    rows = []
    for model_name, seeds in per_seed.items():
        for protocol, sign in protocols.items():
            rankings = [name for (p, name) in seeds[0] if p == protocol]  # input space runs fewer
            if not rankings:  # this model was not run under this protocol (e.g. only the primary one)
                continue
            row = {"model": model_name, "protocol": protocol_name(protocol), "seeds": len(seeds)}
            for name in rankings:
                row[name] = seed_stack(seeds, (protocol, name)).mean()
            compared = [name for name in COMPARED if name in rankings]
            if compared:
                row["interval"] = ("rules v2" if len(seeds) >= MIN_UNITS
                                   else f"image bootstrap, {len(seeds)} seed (rules v2 needs {MIN_UNITS})")
            for name in compared:
                a, b = sign * seed_stack(seeds, (protocol, name)), sign * seed_stack(seeds, (protocol, MAGNITUDE))
                if len(seeds) >= MIN_UNITS:
                    diff, lo, hi = paired_rule_v2_interval(a, b, n_boot=n_boot, seed=0)
                else:
                    diff, lo, hi = paired_bootstrap(a[0], b[0], n_boot=n_boot, seed=0)
                short = COMPARED[name]
                row.update({f"{short} - magnitude (oriented)": diff, f"{short} lo": lo, f"{short} hi": hi})
            rows.append(row)
    return pd.DataFrame(rows)


def deletion_claim(per_seed: list[dict], n_boot: int, model_name: str, ranking: str = MASK) -> Claim:
    """Superiority of ``ranking`` over the magnitude ranking of the same model in the primary
    protocol (feature-space LeRF: larger is better), with the rules v2 interval.

    Refuses (``ValueError``) an empty ``per_seed``, fewer than two seeds, a seed without the
    ``ranking`` or magnitude area (e.g. a dense model's), unpaired or too few images and NaN areas.
    """
    check_n_boot(n_boot)
    check_distinct("ranking", ranking, "the baseline ranking", MAGNITUDE)
    check_seed_areas(per_seed, "per_seed", [(PRIMARY, ranking), (PRIMARY, MAGNITUDE)], min_seeds=MIN_UNITS)
    a, b = seed_stack(per_seed, (PRIMARY, ranking)), seed_stack(per_seed, (PRIMARY, MAGNITUDE))
    diff, lo, hi = paired_rule_v2_interval(a, b, n_boot=n_boot, seed=0)
    name = RANKING_NAMES.get(ranking, f"{ranking} ranking")
    return Claim(
        claim=f"{name} beats magnitude ranking ({model_name})",
        metric="area under the feature-space LeRF curve (probability of the predicted class)",
        baseline_name="magnitude ranking (pre-mask)", baseline=float(mean_of_seed_means(b)), ersm=float(mean_of_seed_means(a)),
        difference=diff, lo=lo, hi=hi,
        rule=f"superiority of area({name}) - area(magnitude ranking) of the same model; {RULE_V2_INTERVAL}; "
             f"SUPPORTED if the 95% interval lies above 0, NOT SUPPORTED if below, else INCONCLUSIVE",
        verdict=superiority(lo, hi))


def deletion_claims(per_seed: list[dict], n_boot: int, model_name: str) -> list[Claim]:
    """The two primary rows of ``model_name``: the total-energy ranking, then the mask ranking,
    each against magnitude (``deletion_claim``). Both are checked before either is computed."""
    check_n_boot(n_boot)
    check_seed_areas(per_seed, "per_seed", [(PRIMARY, r) for r in (*PRIMARY_RANKINGS, MAGNITUDE)], min_seeds=MIN_UNITS)
    return [deletion_claim(per_seed, n_boot, model_name, ranking) for ranking in PRIMARY_RANKINGS]
