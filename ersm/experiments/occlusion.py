"""Claim 3: robustness to structured occlusion; and the abstract's premise: background reliance.

Occlusion protocol (`docs/protocols.md#occlusion`): accuracy against the occluded share of the
image, 0 to 50%, for one random square patch (Cutout-like), object-targeted patches (covering
that share of the digit's own pixels) and a hide-and-seek grid, each filled with zeros or with
a texture crop. Square patches favour models trained with square patches (arXiv 2211.13734),
so the object and grid rows are reported beside them. Area under each robustness curve: the
trapezoid over the fractions, divided by their range.

Rules fixed before the run:
- Primary: square patches, zero fill, occluded share >= 30%. Per test image, correctness is
  averaged over seeds and over those fractions; the difference ERSM - baseline is bootstrapped
  over images (paired); superiority rule. Against dense (the claim) and against Cutout.
- Background reliance: models trained with background_label_correlation = RHO; per test image
  the gap is correct(aligned background) - correct(swapped background) (the same scene under
  both, see ``ClutteredDigits``), averaged over seeds; the claim "ERSM relies less on the
  background" is the paired bootstrap of gap(dense) - gap(ERSM) over images; superiority.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ersm.data import occlude
from ersm.inference import predict
from ersm.metrics.stats import paired_bootstrap
from ersm.verdicts import MIN_UNITS, Claim, check_distinct, check_member, check_number, check_units, superiority

KINDS = ("square", "object", "grid")
FILLS = ("zero", "texture")
PRIMARY = ("square", "zero")


def occlusion_correctness(models: dict[str, list], configs: dict[str, list], test, fractions: list[float],
                          kinds=KINDS, fills=FILLS, seed: int = 0) -> dict:
    """``{(model, seed, kind, fill): bool [len(fractions), N]}``: is each occluded test image right?

    A condition that leaves the images unchanged (the 0% column of every kind and fill) gives
    the clean predictions, so those are computed once per model and reused.
    """
    images, labels, masks = test
    runs = [(name, model, config) for name in models for model, config in zip(models[name], configs[name])]
    clean = {}  # (model, seed) -> correctness on the unchanged test set
    correct = {}
    for kind in kinds:
        for fill in fills:
            for f_index, fraction in enumerate(fractions):
                occluded = occlude(images, fraction, kind=kind, fill=fill, seed=seed, masks=masks)
                unchanged = torch.equal(occluded, images)
                for name, model, config in runs:
                    hits = correct.setdefault((name, config.seed, kind, fill), np.zeros((len(fractions), len(labels)), dtype=bool))
                    if unchanged and (name, config.seed) in clean:
                        hits[f_index] = clean[name, config.seed]
                        continue
                    hits[f_index] = (predict(model, occluded).logits.argmax(1) == labels).numpy()
                    if unchanged:
                        clean[name, config.seed] = hits[f_index]
    return correct


def curve_frame(correct: dict, fractions: list[float]) -> pd.DataFrame:
    """Accuracy (%) per (model, seed, kind, fill, fraction), plus the curve's normalised area."""
    rows = []
    span = fractions[-1] - fractions[0]
    for (name, seed, kind, fill), hits in correct.items():
        accuracy = 100 * hits.mean(axis=1)
        area = np.trapezoid(accuracy, fractions) / span if span > 0 else accuracy[0]
        rows += [{"model": name, "seed": seed, "kind": kind, "fill": fill, "fraction": f, "accuracy": a, "curve_area": area}
                 for f, a in zip(fractions, accuracy)]
    return pd.DataFrame(rows)


def seed_averaged(correct: dict, name: str, kind: str, fill: str, rows: np.ndarray) -> np.ndarray:
    """Per-image correctness averaged over seeds and the selected fraction rows: ``[N]``."""
    per_seed = [hits[rows].mean(axis=0) for (n, _, k, f), hits in correct.items() if (n, k, f) == (name, kind, fill)]
    return np.mean(per_seed, axis=0)


def check_fractions(fractions) -> np.ndarray:
    """``fractions``: a strictly increasing 1-D list of finite occluded shares, at least two of them."""
    try:
        x = np.asarray(fractions, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"fractions={fractions!r} must be a list of numbers") from None
    if x.ndim != 1 or x.size < 2 or not np.isfinite(x).all() or (np.diff(x) <= 0).any():
        raise ValueError(f"fractions={fractions!r} must be a strictly increasing list of at least 2 finite numbers")
    return x


def check_correct(correct, fractions, kind: str, fill: str, models: dict) -> None:
    """``correct`` holds, for each of ``models`` (argument name -> model) and ``(kind, fill)``, one
    finite ``[len(fractions), N]`` array per seed, with the same ``N >= 2`` test images throughout."""
    check_fractions(fractions)
    if not isinstance(correct, dict) or not correct:
        raise ValueError(f"correct must be a non-empty dict {{(model, seed, kind, fill): [len(fractions), N]}}, "
                         f"got correct={correct!r:.80}")
    if not all(isinstance(key, tuple) and len(key) == 4 for key in correct):
        raise ValueError("correct's keys must be (model, seed, kind, fill) tuples, as occlusion_correctness returns")
    present = list(dict.fromkeys(key[0] for key in correct))
    for arg, model in models.items():
        check_member(arg, model, present, "correct")
    (first, a), (second, b) = models.items()
    check_distinct(first, a, second, b)
    n_images = None
    for arg, model in models.items():
        entries = {key: hits for key, hits in correct.items() if (key[0], key[2], key[3]) == (model, kind, fill)}
        if not entries:
            pairs = sorted({(k, f) for n, _, k, f in correct if n == model}, key=str)
            raise ValueError(f"correct has no entry for {arg}={model!r} with kind={kind!r}, fill={fill!r}; "
                             f"its (kind, fill) pairs are {pairs}")
        for key, hits in entries.items():
            shape = np.shape(hits)
            if len(shape) != 2 or shape[0] != len(fractions):
                raise ValueError(f"correct[{key!r}] has shape {shape}; expected [len(fractions)={len(fractions)}, N images]")
            if n_images is not None and shape[1] != n_images:
                raise ValueError(f"correct[{key!r}] covers {shape[1]} test images, others {n_images}; "
                                 f"a paired comparison needs the same test images")
            n_images = shape[1]
            if not np.isfinite(np.asarray(hits, dtype=np.float64)).all():
                raise ValueError(f"correct[{key!r}] has NaN or inf; correctness must be finite (bool or 0/1)")
    if n_images < MIN_UNITS:
        raise ValueError(f"correct covers {n_images} test image(s); a bootstrap interval over images needs at least {MIN_UNITS}")


def occlusion_claim(correct: dict, fractions: list[float], treatment: str, baseline: str, n_boot: int = 2000,
                    kind: str = PRIMARY[0], fill: str = PRIMARY[1], at_least: float = 0.3) -> Claim:
    """Superiority of ``treatment`` over ``baseline`` in accuracy at occluded shares >= ``at_least``.

    Refuses (``ValueError``) an empty ``correct``, a model or (kind, fill) it lacks, arrays
    that do not match ``fractions`` or each other, fewer than two images and NaN entries.
    """
    check_number("at_least", at_least)
    check_correct(correct, fractions, kind, fill, {"treatment": treatment, "baseline": baseline})
    rows = np.asarray(fractions) >= at_least - 1e-9
    if not rows.any():
        raise ValueError(f"at_least={at_least!r}: no occluded share in fractions={fractions} reaches it")
    a = 100 * seed_averaged(correct, treatment, kind, fill, rows)
    b = 100 * seed_averaged(correct, baseline, kind, fill, rows)
    diff, lo, hi = paired_bootstrap(a, b, n_boot=n_boot, seed=0)
    return Claim(
        claim=f"occlusion robustness ({treatment} vs {baseline})",
        metric=f"accuracy (%) under {kind} occlusion, {fill} fill, {int(100 * at_least)}-{int(100 * fractions[-1])}% occluded",
        baseline_name=baseline, baseline=b.mean(), ersm=a.mean(), difference=diff, lo=lo, hi=hi,
        rule="superiority: paired bootstrap over test images (seed-averaged; conditional on these trained models) of the accuracy difference; "
             "SUPPORTED if the 95% interval lies above 0, NOT SUPPORTED if below, else INCONCLUSIVE",
        verdict=superiority(lo, hi))


def curve_area_difference(correct: dict, fractions: list[float], treatment: str, baseline: str, kind: str, fill: str,
                          n_boot: int = 2000) -> tuple[float, float, float, float, float]:
    """Area under the robustness curve (accuracy %, trapezoid over the fractions / their range).

    Per test image the area of its seed-averaged correctness curve; returns ``(baseline area,
    treatment area, difference, lo, hi)`` with a paired bootstrap over images. Refuses bad input
    as ``occlusion_claim`` does.
    """
    check_correct(correct, fractions, kind, fill, {"treatment": treatment, "baseline": baseline})
    rows = np.ones(len(fractions), dtype=bool)
    span = fractions[-1] - fractions[0]
    curves = {name: np.mean([hits[rows] for (n, _, k, f), hits in correct.items() if (n, k, f) == (name, kind, fill)], axis=0)
              for name in (treatment, baseline)}
    area = {name: 100 * np.trapezoid(c, fractions, axis=0) / span for name, c in curves.items()}
    diff, lo, hi = paired_bootstrap(area[treatment], area[baseline], n_boot=n_boot, seed=0)
    return area[baseline].mean(), area[treatment].mean(), diff, lo, hi


def background_gaps(models: dict[str, list], aligned, swapped) -> dict[str, np.ndarray]:
    """Per image, correct(aligned) - correct(swapped) averaged over seeds, for each model family."""
    gaps = {}
    for name, runs in models.items():
        per_seed = []
        for model in runs:
            right_aligned = predict(model, aligned[0]).logits.argmax(1) == aligned[1]
            right_swapped = predict(model, swapped[0]).logits.argmax(1) == swapped[1]
            per_seed.append((right_aligned.float() - right_swapped.float()).numpy())
        gaps[name] = 100 * np.mean(per_seed, axis=0)
    return gaps


def background_claim(gaps: dict[str, np.ndarray], treatment: str, baseline: str, rho: float, n_boot: int = 2000) -> Claim:
    """Superiority: ``gap(baseline) - gap(treatment)`` over images (a smaller gap for ``treatment`` is positive).

    Refuses (``ValueError``) an empty ``gaps``, a model it lacks, unpaired or too few images,
    NaN gaps and a ``rho`` outside [0, 1].
    """
    check_number("rho", rho, low=0.0, high=1.0)
    if not isinstance(gaps, dict) or not gaps:
        raise ValueError(f"gaps must be a non-empty dict {{model: per-image gap [N]}}, got gaps={gaps!r:.80}")
    check_member("treatment", treatment, gaps, "gaps")
    check_member("baseline", baseline, gaps, "gaps")
    check_distinct("treatment", treatment, "baseline", baseline)
    n = check_units(f"gaps[{baseline!r}]", gaps[baseline]).size
    check_units(f"gaps[{treatment!r}]", gaps[treatment], n=n)
    diff, lo, hi = paired_bootstrap(gaps[baseline], gaps[treatment], n_boot=n_boot, seed=0)
    return Claim(
        claim=f"less background reliance ({treatment})",
        metric=f"background gap: accuracy aligned - swapped (points), trained with rho={rho}",
        baseline_name=baseline, baseline=gaps[baseline].mean(), ersm=gaps[treatment].mean(),
        difference=diff, lo=lo, hi=hi,
        rule="superiority: paired bootstrap over test images of gap(dense) - gap(ERSM); "
             "SUPPORTED if the 95% interval lies above 0 (ERSM's gap is smaller), NOT SUPPORTED if below",
        verdict=superiority(lo, hi))
