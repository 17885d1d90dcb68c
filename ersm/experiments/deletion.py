"""Claim 4: ranking tokens by learned energy beats ranking by feature magnitude in deletion tests.

Protocols (PROTOCOLS.md; RISE, Petsiuk et al. 2018; ROAD, Rong et al. 2022): tokens of the
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
from ersm.verdicts import Claim, superiority

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


def comparison_frame(per_seed: dict[str, list[dict]], protocols: dict, n_boot: int) -> pd.DataFrame:
    """Mean area per (model, protocol, ranking) and, for ERSM, mask vs magnitude with its interval."""
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
    a, b = seed_mean(per_seed, (PRIMARY, MASK)), seed_mean(per_seed, (PRIMARY, MAGNITUDE))
    diff, lo, hi = paired_bootstrap(a, b, n_boot=n_boot, seed=0)
    return Claim(
        claim=f"mask (unary-energy) ranking beats magnitude ranking ({model_name})",
        metric="area under the feature-space LeRF curve (probability of the predicted class)",
        baseline_name="magnitude ranking", baseline=b.mean(), ersm=a.mean(), difference=diff, lo=lo, hi=hi,
        rule="superiority: paired bootstrap over test images (seed-averaged; conditional on these trained models) of "
             "area(mask ranking) - area(magnitude ranking); SUPPORTED if the 95% interval lies above 0, NOT SUPPORTED if below",
        verdict=superiority(lo, hi))
