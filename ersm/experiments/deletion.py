"""Claim 4: ranking tokens by learned energy beats ranking by feature magnitude in deletion tests.

Protocols (`docs/protocols.md#deletion-and-insertion`; RISE, Petsiuk et al. 2018; ROAD, Rong et al. 2022): tokens of the
masked stage are removed step by step, 0 to 100%, in feature space (zeroed, then the rest of
the network) and in input space (the matching image patches, zero or blur fill, and ROAD's
noisy linear imputation as a control). Two orders: least relevant first (LeRF, the paper's
pruning reading: the predicted class should survive, higher area is better) and most relevant
first (MoRF, RISE deletion: lower is better); plus RISE insertion (higher is better). The
tracked quantity is the softmax probability of the class predicted on the clean image, and a
curve's score is its trapezoid area.

Rule, fixed before the run. Primary: feature space, LeRF, ERSM paper model; per test image, the
area with the ERSM-mask ranking minus the area with the magnitude ranking, averaged over
seeds; paired bootstrap over images; SUPPORTED if the 95% interval lies above 0, NOT
SUPPORTED if below, else INCONCLUSIVE. Every other protocol is reported with the same
interval, oriented so that a positive difference favours the ERSM ranking. With the same
substrate, MoRF insertion visits the same token sets as LeRF deletion in reverse order when
no two scores tie and every step removes a whole number of tokens (``k * h * w / steps``, true
for the 12x12 grid of ``ci``, not for the 14x14 grid of ``full``), so their areas then coincide
(the trapezoid rule is symmetric); both rows are kept because RISE and the pruning reading name
them differently, and ties (Grad-CAM's zeros) or rounding make them differ. The bootstrap
resamples images, so its interval is conditional on the trained models (seed variance is not
in it). The masked-feature magnitude (``rankings.MASKED_MAGNITUDE``) is reported as the control
for the head start the mask ranking has in feature space.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ersm.experiments.rankings import MAGNITUDE, MASK, StageView
from ersm.metrics.deletion import feature_curves, input_curves, trapezoid_auc
from ersm.metrics.stats import paired_bootstrap
from ersm.verdicts import Claim, check_units, superiority

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


def check_seed_areas(per_seed, name: str, keys=()) -> None:
    """``per_seed``: a non-empty list of ``{(protocol, ranking): area [N]}``, one per seed, each
    holding every one of ``keys`` as a finite array over the same ``N >= 2`` images."""
    if not isinstance(per_seed, (list, tuple)) or not per_seed:
        raise ValueError(f"{name} must be a non-empty list of {{(protocol, ranking): area [N]}} dicts, one per seed; "
                         f"got {name}={per_seed!r:.80}")
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
    """Mean area per (model, protocol, ranking) and, for ERSM, mask vs magnitude with its interval.

    Refuses (``ValueError``) an empty ``per_seed`` or ``protocols``, a sign other than +1/-1,
    a model without seeds, and, where the mask ranking is there, a missing magnitude ranking,
    unpaired or too few images and NaN areas.
    """
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
            if (protocol, MASK) in seeds[0]:
                check_seed_areas(seeds, f"per_seed[{model_name!r}]", [(protocol, MASK), (protocol, MAGNITUDE)])
    rows = []
    for model_name, seeds in per_seed.items():
        for protocol, sign in protocols.items():
            row = {"model": model_name, "protocol": protocol_name(protocol)}
            rankings = [name for (p, name) in seeds[0] if p == protocol]  # input space runs fewer
            for name in rankings:
                row[name] = seed_mean(seeds, (protocol, name)).mean()
            if MASK in rankings:
                a, b = seed_mean(seeds, (protocol, MASK)), seed_mean(seeds, (protocol, MAGNITUDE))
                diff, lo, hi = paired_bootstrap(sign * a, sign * b, n_boot=n_boot, seed=0)
                row.update({"mask - magnitude (oriented)": diff, "ci_lo": lo, "ci_hi": hi})
            rows.append(row)
    return pd.DataFrame(rows)


def deletion_claim(per_seed: list[dict], n_boot: int, model_name: str) -> Claim:
    """Superiority of the mask ranking over the magnitude ranking in the primary protocol (LeRF: larger is better).

    Refuses (``ValueError``) an empty ``per_seed``, a seed without the mask or magnitude area
    (e.g. a dense model's), unpaired or too few images and NaN areas.
    """
    check_seed_areas(per_seed, "per_seed", [(PRIMARY, MASK), (PRIMARY, MAGNITUDE)])
    a, b = seed_mean(per_seed, (PRIMARY, MASK)), seed_mean(per_seed, (PRIMARY, MAGNITUDE))
    diff, lo, hi = paired_bootstrap(a, b, n_boot=n_boot, seed=0)
    return Claim(
        claim=f"mask (unary-energy) ranking beats magnitude ranking ({model_name})",
        metric="area under the feature-space LeRF curve (probability of the predicted class)",
        baseline_name="magnitude ranking", baseline=b.mean(), ersm=a.mean(), difference=diff, lo=lo, hi=hi,
        rule="superiority: paired bootstrap over test images (seed-averaged; conditional on these trained models) of "
             "area(mask ranking) - area(magnitude ranking); SUPPORTED if the 95% interval lies above 0, NOT SUPPORTED if below",
        verdict=superiority(lo, hi))
