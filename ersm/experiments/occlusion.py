"""Claim 3: robustness to structured occlusion; and the abstract's premise: background reliance.

Occlusion protocol (`docs/protocols.md#occlusion`): accuracy against the occluded share of the
image, 0 to 50%, for one random square patch (Cutout-like), object-targeted patches (covering
that share of the digit's own pixels) and a hide-and-seek grid, each filled with zeros or with
a texture crop. Square patches favour models trained with square patches (arXiv 2211.13734),
so the object and grid rows are reported beside them. Area under each robustness curve: the
trapezoid over the fractions, divided by their range.

Rules v2 (`docs/rules.md#03-occlusion-and-background-reliance-v2`) as amended (v2.4, ``ersm.study.rules``; v2 was written before the ``full`` run, its amendments after its test scores existed). Every
interval is the rules v2 interval (``paired_rule_v2_interval``) of per-seed, per-image arrays
``[S, N]``: seeds paired by row, the same test images in every column.

- Occlusion, primary: **retained accuracy**, square patches, zero fill. The *headroom shares*
  are the occluded shares > 0 at which the dense model's accuracy (mean over seeds) is at least
  ``chance + margin`` (``headroom_fractions``; chance is ``100 / classes``, ``chance_level``:
  10% on the digits and CIFAR-10, so the bar is 20% there, 2.7% on the 37 Pet breeds), chosen from the dense model's numbers
  alone. Per seed, the model's occluded accuracy averaged over those shares divided by its own
  clean accuracy (``mean_seed_ratio``, in %). Superiority of ``treatment - baseline``, against
  dense and against dense + Cutout. No headroom share: INCONCLUSIVE (no headroom). Rules v3
  choose the shares on the validation images instead (``validation_headroom_fractions``).
- Occlusion, reported: absolute accuracy at the headroom shares (``accuracy_difference``), the
  area under the whole curve (``curve_area_difference``), every kind and fill.
- Background reliance: models trained at several ``rho = background_label_correlation``. The
  primary rho is the largest at which dense's swapped-background accuracy (mean over seeds) is
  at least ``chance + margin`` (``background_rho``); none: INCONCLUSIVE (saturated). Per test
  image and seed the gap is ``100 * (correct(aligned) - correct(swapped))`` in points, the same
  scene under both (see ``ClutteredDigits``); superiority of ``gap(dense) - gap(ERSM)``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ersm.training import inference
from ersm.training.config import DATASETS
from ersm.data import capabilities, occlude
from ersm.experiments import common
from ersm.experiments.common import DENSE
from ersm.metrics.hierarchical import mean_of_seed_means, mean_seed_ratio, paired_rule_v2_interval
from ersm.checks import as_numbers, check_seed_images
from ersm.study.verdicts import (INCONCLUSIVE, MIN_UNITS, RULE_V2_INTERVAL, Claim, _sorted, check_distinct, check_member,
                           check_n_boot, check_number, superiority)

KINDS = ("square", "object", "grid")
FILLS = ("zero", "texture")
PRIMARY = ("square", "zero")
CONDITIONS = tuple((kind, fill) for kind in KINDS for fill in FILLS)  # every (kind, fill), in computing order
CHANCE, MARGIN = 10.0, 10.0  # the digits' chance (10 classes; chance_level gives any dataset's); headroom: 10 points above it


# ----------------------------------------------------------------------------- datasets

OBJECT_CLAIM, BACKGROUND_CLAIM = "object-targeted occlusion", "background reliance"


def chance_level(dataset: str) -> float:
    """Accuracy in % of a uniform guess on ``dataset``: ``100 / classes`` (10 on the digits and
    CIFAR-10, 100/37 on Oxford-IIIT Pet). The headroom bars are ``chance + margin``."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset={dataset!r} is unknown; choose one of {list(DATASETS)}")
    return 100.0 / DATASETS[dataset].classes


def conditions_for(dataset: str) -> tuple[tuple[str, str], ...]:
    """The ``(kind, fill)`` conditions ``dataset`` supports: every one of :data:`CONDITIONS`, less
    the object-targeted kind where it has no object masks (``ersm.data.capabilities``)."""
    if capabilities(dataset)["object_masks"]:
        return CONDITIONS
    return tuple(pair for pair in CONDITIONS if pair[0] != "object")


def not_applicable(dataset: str) -> list[dict]:
    """The results-JSON entries (each printed as one line) of notebook 03's parts that ``dataset``
    cannot support: object-targeted occlusion without object masks, background reliance without
    the cluttered digits' aligned/swapped backgrounds. Empty on the cluttered digits."""
    able = capabilities(dataset)
    out = []
    if not able["object_masks"]:
        out.append(common.not_applicable(OBJECT_CLAIM, dataset, "object masks"))
    if not able["background_swap"]:
        out.append(common.not_applicable(BACKGROUND_CLAIM, dataset, "the aligned and swapped backgrounds of cluttered_digits"))
    return out


# ----------------------------------------------------------------------------- correctness

def configs(base, params: dict, selected: dict[str, dict]) -> tuple[dict[str, list], dict[float, dict[str, list]]]:
    """What notebook 03 trains: ``(families, spurious)``. The families are dense, dense + Cutout and
    every ERSM variant with its ``beta = 0`` control at ``SEEDS``; ``spurious`` maps each rho of
    ``RHOS`` to the ``BACKGROUND_MODELS`` trained on that spurious split (empty where the dataset
    has no backgrounds to swap). All at their ``selected`` settings."""
    families = common.family(base, params["SEEDS"], common.ALL_MODELS, selected)
    rhos = params["RHOS"] if capabilities(params["DATASET"])["background_swap"] else []
    spurious = {rho: common.family(base.replace(background_label_correlation=rho), params["SEEDS"], params["BACKGROUND_MODELS"],
                                   selected) for rho in rhos}
    return families, spurious

def occlusion_correctness(models: dict[str, list], configs: dict[str, list], test, fractions: list[float],
                          kinds=KINDS, fills=FILLS, seed: int = 0, conditions=None) -> dict:
    """``{(model, seed, kind, fill): bool [len(fractions), N]}``: is each occluded test image right?

    ``conditions`` picks the ``(kind, fill)`` pairs: ``None`` (the default) every pair of
    ``kinds`` x ``fills`` for every model; a list of pairs for every model; or a dict ``{model:
    list of pairs}`` naming every model of ``models`` (e.g. the primary pair for most models,
    every pair for two). Pass either ``conditions`` or ``kinds``/``fills``, not both. The
    occluded images of a condition are made once and shared by every model that needs them
    (occluders drawn from ``seed``, so every model sees the same images). A condition that
    leaves the images unchanged (the 0% column of every kind and fill) gives the clean
    predictions, so those are computed once per model and reused.
    """
    wanted = _wanted_conditions(models, kinds, fills, conditions)
    images, labels, masks = test
    runs = [(name, model, config) for name in models for model, config in zip(models[name], configs[name])]
    order = list(dict.fromkeys(pair for pairs in wanted.values() for pair in pairs))
    order.sort(key=CONDITIONS.index)
    clean = {}  # (model, seed) -> correctness on the unchanged test set
    correct = {}
    for kind, fill in order:
        for f_index, fraction in enumerate(fractions):
            occluded = occlude(images, fraction, kind=kind, fill=fill, seed=seed, masks=masks)
            unchanged = torch.equal(occluded, images)
            for name, model, config in runs:
                if (kind, fill) not in wanted[name]:
                    continue
                hits = correct.setdefault((name, config.seed, kind, fill), np.zeros((len(fractions), len(labels)), dtype=bool))
                if unchanged and (name, config.seed) in clean:
                    hits[f_index] = clean[name, config.seed]
                    continue
                hits[f_index] = inference.correct(model, occluded, labels).numpy()
                if unchanged:
                    clean[name, config.seed] = hits[f_index]
    return correct


def _wanted_conditions(models, kinds, fills, conditions) -> dict[str, list[tuple[str, str]]]:
    """``{model: [(kind, fill), ...]}`` from the arguments of ``occlusion_correctness``; ValueError on bad ones."""
    if conditions is None:
        for name, values, known in (("kinds", kinds, KINDS), ("fills", fills, FILLS)):
            if isinstance(values, str) or not all(v in known for v in values):
                raise ValueError(f"{name}={values!r} must be a list of some of {list(known)}")
        pairs = [(kind, fill) for kind in kinds for fill in fills]
        return {name: pairs for name in models}
    if tuple(kinds) != KINDS or tuple(fills) != FILLS:
        raise ValueError(f"pass either conditions or kinds/fills, not both; got conditions={conditions!r}, "
                         f"kinds={kinds!r}, fills={fills!r}")
    if isinstance(conditions, dict):
        for name in conditions:
            check_member("a key of conditions", name, models, "models")
        missing = [name for name in models if name not in conditions]
        if missing:
            raise ValueError(f"conditions has no entry for the model(s) {missing}; a dict of conditions names every model")
        return {name: _check_pairs(f"conditions[{name!r}]", conditions[name]) for name in models}
    pairs = _check_pairs("conditions", conditions)
    return {name: pairs for name in models}


def _check_pairs(name: str, pairs) -> list[tuple[str, str]]:
    if isinstance(pairs, (str, dict)) or not isinstance(pairs, (list, tuple)) or not pairs:
        raise ValueError(f"{name}={pairs!r} must be a non-empty list of (kind, fill) pairs")
    out = []
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or tuple(pair) not in CONDITIONS:
            raise ValueError(f"{name} holds {pair!r}, not a (kind, fill) pair; kinds are {list(KINDS)}, fills {list(FILLS)}")
        out.append(tuple(pair))
    return list(dict.fromkeys(out))


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


def seed_rows(correct: dict, name: str, kind: str, fill: str) -> np.ndarray:
    """``float [S, len(fractions), N]``: ``name``'s correctness under ``(kind, fill)``, one row per seed, seeds sorted."""
    keys = _sorted(key for key in correct if (key[0], key[2], key[3]) == (name, kind, fill))
    return np.stack([np.asarray(correct[key], dtype=np.float64) for key in keys])


# ----------------------------------------------------------------------------- checks

def check_fractions(fractions) -> np.ndarray:
    """``fractions``: a strictly increasing 1-D list of finite occluded shares, at least two of them."""
    x = as_numbers("fractions", fractions, "a list of numbers")
    if x.ndim != 1 or x.size < 2 or not np.isfinite(x).all() or (np.diff(x) <= 0).any():
        raise ValueError(f"fractions={fractions!r} must be a strictly increasing list of at least 2 finite numbers")
    return x


def check_correct(correct, fractions, kind: str, fill: str, models: dict) -> None:
    """``correct`` holds, for each of ``models`` (argument name -> model) and ``(kind, fill)``, one
    finite ``[len(fractions), N]`` array per seed, the same ``N >= 2`` test images throughout, and
    the same ``S >= 2`` seeds for every model (the rules v2 interval pairs models by seed)."""
    check_fractions(fractions)
    if not isinstance(correct, dict) or not correct:
        raise ValueError(f"correct must be a non-empty dict {{(model, seed, kind, fill): [len(fractions), N]}}, "
                         f"got correct={correct!r:.80}")
    if not all(isinstance(key, tuple) and len(key) == 4 for key in correct):
        raise ValueError("correct's keys must be (model, seed, kind, fill) tuples, as occlusion_correctness returns")
    present = list(dict.fromkeys(key[0] for key in correct))
    for arg, model in models.items():
        check_member(arg, model, present, "correct")
    if "treatment" in models and "baseline" in models:
        check_distinct("treatment", models["treatment"], "baseline", models["baseline"])
    n_images, seeds, previous = None, None, None
    for arg, model in models.items():
        entries = {key: hits for key, hits in correct.items() if (key[0], key[2], key[3]) == (model, kind, fill)}
        if not entries:
            pairs = _sorted({(k, f) for n, _, k, f in correct if n == model})
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
        own = _sorted(key[1] for key in entries)
        if len(own) < MIN_UNITS:
            raise ValueError(f"correct has {len(own)} seed(s) for {arg}={model!r} with kind={kind!r}, fill={fill!r}; "
                             f"the rules v2 interval needs at least {MIN_UNITS}")
        if seeds is not None and own != seeds:
            raise ValueError(f"correct has seeds {own} for {arg}={model!r} but {seeds} for {previous} "
                             f"(kind={kind!r}, fill={fill!r}); the interval pairs models by seed")
        seeds, previous = own, f"{arg}={model!r}"
    if n_images < MIN_UNITS:
        raise ValueError(f"correct covers {n_images} test image(s); an interval over images needs at least {MIN_UNITS}")


def check_headroom(chance, margin) -> None:
    check_number("chance", chance, low=0.0, high=100.0)
    check_number("margin", margin, low=0.0, high=100.0)


def share_text(shares) -> str:
    return ", ".join(f"{100 * s:g}%" for s in shares)


# ----------------------------------------------------------------------------- occlusion

def headroom_fractions(correct: dict, fractions: list[float], baseline: str = DENSE, kind: str = PRIMARY[0],
                       fill: str = PRIMARY[1], chance: float = CHANCE, margin: float = MARGIN) -> list[float]:
    """The occluded shares (> 0) at which ``baseline``'s accuracy, in %, mean over seeds, is at
    least ``chance + margin`` (to rounding, 1e-9). Chosen from ``baseline``'s numbers alone."""
    check_headroom(chance, margin)
    check_correct(correct, fractions, kind, fill, {"baseline": baseline})
    accuracy = 100 * seed_rows(correct, baseline, kind, fill).mean(axis=2).mean(axis=0)  # [F]
    return [float(f) for f, a in zip(fractions, accuracy) if f > 0 and a >= chance + margin - 1e-9]


def validation_headroom_fractions(models: list, configs: list, fractions: list[float], chance: float | None = None,
                                  margin: float = MARGIN) -> list[float]:
    """Rules v3's headroom shares (claim 03a): ``headroom_fractions`` of the dense ``models`` (one
    per seed, with their ``configs``) on their **validation** images, square patches, zero fill,
    the occluders drawn as on the test images (``occlusion_correctness``, seed 0). ``chance``
    defaults to the dataset's (``chance_level``). The test split is not read: the shares are
    fixed before it is opened."""
    from ersm.data import load_split

    if not models or len(models) != len(configs):
        raise ValueError(f"models has {len(models)} model(s) and configs {len(configs)}; pass one dense model per seed "
                         f"with its config")
    validation = load_split(configs[0], "validation")
    correct = occlusion_correctness({DENSE: models}, {DENSE: configs}, validation, fractions, conditions=[PRIMARY])
    chance = chance_level(configs[0].dataset) if chance is None else chance
    return headroom_fractions(correct, fractions, chance=chance, margin=margin)


def retained_accuracy(occluded: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """``[..., S, N] x 2 -> [...]``: retained accuracy in %, the mean over seeds of occluded / clean accuracy."""
    return 100 * mean_seed_ratio(occluded, clean)


def _clean_row(fractions) -> int:
    rows = [i for i, f in enumerate(fractions) if abs(f) < 1e-12]
    if not rows:
        raise ValueError(f"fractions={list(fractions)!r} has no 0 (the clean images); retained accuracy divides by "
                         f"the clean accuracy")
    return rows[0]


def _share_rows(fractions, shares) -> np.ndarray:
    rows = np.zeros(len(fractions), dtype=bool)
    for share in shares:
        match = [i for i, f in enumerate(fractions) if abs(f - share) < 1e-9]
        if not match:
            raise ValueError(f"shares holds {share!r}, which is not in fractions={list(fractions)!r}")
        rows[match[0]] = True
    return rows


def _retained_arms(correct, fractions, names, kind, fill, shares) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per name, ``(occluded [S, N], clean [S, N])``: correctness averaged over ``shares``, and at 0%.

    Refuses a seed whose clean accuracy is 0 (retained accuracy would divide by it)."""
    rows, clean_row = _share_rows(fractions, shares), _clean_row(fractions)
    arms = []
    for name in names:
        hits = seed_rows(correct, name, kind, fill)
        clean = hits[:, clean_row]
        if (clean.mean(axis=1) == 0).any():
            raise ValueError(f"correct: {name!r} is wrong on every clean image in some seed (kind={kind!r}, fill={fill!r}); "
                             f"retained accuracy needs a clean accuracy above 0")
        arms.append((hits[:, rows].mean(axis=1), clean))
    return arms


def occlusion_claim(correct: dict, fractions: list[float], treatment: str, baseline: str, n_boot: int = 2000,
                    kind: str = PRIMARY[0], fill: str = PRIMARY[1], reference: str = DENSE,
                    chance: float = CHANCE, margin: float = MARGIN) -> Claim:
    """Superiority of ``treatment`` over ``baseline`` in retained accuracy at the headroom shares.

    The shares come from ``reference`` (dense) under the same ``(kind, fill)``
    (``headroom_fractions``); none: INCONCLUSIVE (no headroom), with NaN numbers. Retained
    accuracy (%) per seed is the accuracy averaged over those shares over the same model's clean
    accuracy (``fractions`` must hold 0); the difference ``treatment - baseline`` reads the rules
    v2 interval. Refuses (``ValueError``) an empty ``correct``, a model or (kind, fill) it lacks,
    arrays that do not match ``fractions`` or each other, fewer than two seeds or images, unpaired
    seeds, NaN entries and a seed with no clean image right.
    """
    check_n_boot(n_boot)
    check_headroom(chance, margin)
    check_correct(correct, fractions, kind, fill, {"treatment": treatment, "baseline": baseline, "reference": reference})
    _clean_row(fractions)
    shares = headroom_fractions(correct, fractions, reference, kind, fill, chance, margin)
    bar = chance + margin
    claim = f"occlusion robustness ({treatment} vs {baseline})"
    rule = (f"superiority of retained accuracy, {treatment} - {baseline}, at the occluded shares where {reference} "
            f"(mean over seeds) stays >= {bar:g}% (chance {chance:g} + {margin:g}); {RULE_V2_INTERVAL}; "
            f"SUPPORTED if the 95% interval lies above 0, NOT SUPPORTED if below, else INCONCLUSIVE")
    if not shares:
        nan = float("nan")
        return Claim(claim=claim, metric=f"retained accuracy (% of clean) under {kind} occlusion, {fill} fill: no share qualifies",
                     baseline_name=baseline, baseline=nan, ersm=nan, difference=nan, lo=nan, hi=nan,
                     rule=f"{rule}; INCONCLUSIVE (no headroom): {reference} is below {bar:g}% at every occluded share > 0",
                     verdict=INCONCLUSIVE)
    a, b = _retained_arms(correct, fractions, (treatment, baseline), kind, fill, shares)
    diff, lo, hi = paired_rule_v2_interval(a, b, retained_accuracy, n_boot=n_boot, seed=0)
    return Claim(
        claim=claim,
        metric=f"retained accuracy (% of clean) under {kind} occlusion, {fill} fill, at {share_text(shares)} occluded "
               f"(the shares where {reference} >= {bar:g}%)",
        baseline_name=baseline, baseline=float(retained_accuracy(*b)), ersm=float(retained_accuracy(*a)),
        difference=diff, lo=lo, hi=hi, rule=rule, verdict=superiority(lo, hi))


def accuracy_difference(correct: dict, fractions: list[float], treatment: str, baseline: str, shares: list[float],
                        n_boot: int = 2000, kind: str = PRIMARY[0], fill: str = PRIMARY[1]) -> tuple[float, float, float, float, float]:
    """Absolute accuracy (%) averaged over ``shares`` (reported, not a verdict).

    Returns ``(baseline accuracy, treatment accuracy, treatment - baseline, lo, hi)``, the
    interval the rules v2 interval. ``shares``: a non-empty list of values of ``fractions``
    (e.g. ``headroom_fractions``). Refuses bad input as ``occlusion_claim`` does.
    """
    check_n_boot(n_boot)
    check_correct(correct, fractions, kind, fill, {"treatment": treatment, "baseline": baseline})
    if isinstance(shares, str) or not isinstance(shares, (list, tuple)) or not shares:
        raise ValueError(f"shares={shares!r} must be a non-empty list of occluded shares from fractions")
    rows = _share_rows(fractions, shares)
    a = 100 * seed_rows(correct, treatment, kind, fill)[:, rows].mean(axis=1)
    b = 100 * seed_rows(correct, baseline, kind, fill)[:, rows].mean(axis=1)
    diff, lo, hi = paired_rule_v2_interval(a, b, n_boot=n_boot, seed=0)
    return float(mean_of_seed_means(b)), float(mean_of_seed_means(a)), diff, lo, hi


def curve_area_difference(correct: dict, fractions: list[float], treatment: str, baseline: str, kind: str, fill: str,
                          n_boot: int = 2000) -> tuple[float, float, float, float, float]:
    """Area under the robustness curve (accuracy %, trapezoid over the fractions / their range), reported.

    Per seed and test image the area of its correctness curve; returns ``(baseline area,
    treatment area, treatment - baseline, lo, hi)`` with the rules v2 interval. Refuses bad
    input as ``occlusion_claim`` does.
    """
    check_n_boot(n_boot)
    check_correct(correct, fractions, kind, fill, {"treatment": treatment, "baseline": baseline})
    span = fractions[-1] - fractions[0]
    area = {name: 100 * np.trapezoid(seed_rows(correct, name, kind, fill), fractions, axis=1) / span  # [S, N]
            for name in (treatment, baseline)}
    diff, lo, hi = paired_rule_v2_interval(area[treatment], area[baseline], n_boot=n_boot, seed=0)
    return float(mean_of_seed_means(area[baseline])), float(mean_of_seed_means(area[treatment])), diff, lo, hi


# ----------------------------------------------------------------------------- background reliance

def background_gaps(models: dict[str, list], aligned, swapped) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(gaps, swapped_accuracy)`` per model family, one row per seed in the order of ``models[name]``.

    ``gaps[name]``: ``[S, N]`` in points, ``100 * (correct(aligned) - correct(swapped))`` per test
    image; ``swapped_accuracy[name]``: ``[S]``, accuracy (%) on the swapped-background images.
    """
    gaps, swapped_accuracy = {}, {}
    for name, runs in models.items():
        per_seed, accuracy = [], []
        for model in runs:
            right_aligned = inference.correct(model, aligned[0], aligned[1]).float()
            right_swapped = inference.correct(model, swapped[0], swapped[1]).float()
            per_seed.append(100 * (right_aligned - right_swapped).numpy())
            accuracy.append(100 * right_swapped.mean().item())
        gaps[name] = np.stack(per_seed).astype(np.float64)
        swapped_accuracy[name] = np.asarray(accuracy, dtype=np.float64)
    return gaps, swapped_accuracy


def check_background(gaps_by_rho, swapped_accuracy_by_rho, models: dict, chooser: str | None = None) -> None:
    """``gaps_by_rho`` maps each rho in [0, 1] to ``{model: gap [S, N]}`` with every one of ``models``
    (argument name -> model), same shape, ``S, N >= 2``, finite; ``swapped_accuracy_by_rho`` has the
    same rhos, each with ``{chooser: [S] accuracy in %}`` (finite, in [0, 100])."""
    for name, value in (("gaps_by_rho", gaps_by_rho), ("swapped_accuracy_by_rho", swapped_accuracy_by_rho)):
        if value is None and name == "swapped_accuracy_by_rho" and chooser is None:
            continue
        if not isinstance(value, dict) or not value:
            raise ValueError(f"{name} must be a non-empty dict {{rho: {{model: ...}}}}, got {name}={value!r:.80}")
        for rho in value:
            check_number(f"a rho of {name}", rho, low=0.0, high=1.0)
    if chooser is not None and _sorted(gaps_by_rho) != _sorted(swapped_accuracy_by_rho):
        raise ValueError(f"gaps_by_rho has rhos {_sorted(gaps_by_rho)} but swapped_accuracy_by_rho has "
                         f"{_sorted(swapped_accuracy_by_rho)}; both need the same rhos")
    if "treatment" in models and "baseline" in models:
        check_distinct("treatment", models["treatment"], "baseline", models["baseline"])
    for rho, gaps in gaps_by_rho.items():
        if not isinstance(gaps, dict) or not gaps:
            raise ValueError(f"gaps_by_rho[{rho!r}] must be a non-empty dict {{model: gap [S, N]}}, got {gaps!r:.80}")
        shape = None
        for arg, model in models.items():
            check_member(arg, model, gaps, f"gaps_by_rho[{rho!r}]")
            shape = check_seed_images(f"gaps_by_rho[{rho!r}][{model!r}]", gaps[model], shape=shape).shape
        if chooser is None:
            continue
        swapped = swapped_accuracy_by_rho[rho]
        if not isinstance(swapped, dict):
            raise ValueError(f"swapped_accuracy_by_rho[{rho!r}] must be a dict {{model: accuracy [S]}}, got {swapped!r:.80}")
        check_member("baseline", chooser, swapped, f"swapped_accuracy_by_rho[{rho!r}]")
        accuracy = np.asarray(swapped[chooser], dtype=np.float64)
        label = f"swapped_accuracy_by_rho[{rho!r}][{chooser!r}]"
        if accuracy.shape != (shape[0],):
            raise ValueError(f"{label} has shape {accuracy.shape}; expected one accuracy per seed, [{shape[0]}], "
                             f"as the gaps have")
        if not np.isfinite(accuracy).all() or (accuracy < 0).any() or (accuracy > 100).any():
            raise ValueError(f"{label}={accuracy.tolist()} must hold finite accuracies in [0, 100] (%)")


def background_rho(swapped_accuracy_by_rho: dict, baseline: str = DENSE, chance: float = CHANCE,
                   margin: float = MARGIN) -> float | None:
    """The largest rho at which ``baseline``'s swapped-background accuracy (%, mean over seeds) is
    at least ``chance + margin`` (to rounding, 1e-9); ``None`` if none is (saturated)."""
    check_headroom(chance, margin)
    if not isinstance(swapped_accuracy_by_rho, dict) or not swapped_accuracy_by_rho:
        raise ValueError(f"swapped_accuracy_by_rho must be a non-empty dict {{rho: {{model: accuracy [S]}}}}, "
                         f"got swapped_accuracy_by_rho={swapped_accuracy_by_rho!r:.80}")
    qualifying = []
    for rho, accuracies in swapped_accuracy_by_rho.items():
        check_number("a rho of swapped_accuracy_by_rho", rho, low=0.0, high=1.0)
        check_member("baseline", baseline, accuracies, f"swapped_accuracy_by_rho[{rho!r}]")
        values = np.asarray(accuracies[baseline], dtype=np.float64)
        if values.ndim != 1 or values.size == 0 or not np.isfinite(values).all():
            raise ValueError(f"swapped_accuracy_by_rho[{rho!r}][{baseline!r}]={accuracies[baseline]!r} must be a "
                             f"non-empty 1-D array of finite accuracies (%), one per seed")
        if values.mean() >= chance + margin - 1e-9:
            qualifying.append(rho)
    return max(qualifying) if qualifying else None


def background_gap_difference(gaps_by_rho: dict, treatment: str, baseline: str, rho: float,
                              n_boot: int = 2000) -> tuple[float, float, float, float, float]:
    """``(baseline gap, treatment gap, gap(baseline) - gap(treatment), lo, hi)`` at ``rho`` (reported at every rho).

    Gaps in points, mean over seeds and images; the rules v2 interval. ValueError for a ``rho``
    not in ``gaps_by_rho`` and bad gaps (see ``background_claim``).
    """
    check_n_boot(n_boot)
    check_background(gaps_by_rho, None, {"baseline": baseline, "treatment": treatment})
    check_member("rho", rho, gaps_by_rho, "gaps_by_rho", what="rho")
    base = np.asarray(gaps_by_rho[rho][baseline], dtype=np.float64)
    treat = np.asarray(gaps_by_rho[rho][treatment], dtype=np.float64)
    diff, lo, hi = paired_rule_v2_interval(base, treat, n_boot=n_boot, seed=0)  # oriented: gap(baseline) - gap(treatment)
    return float(mean_of_seed_means(base)), float(mean_of_seed_means(treat)), diff, lo, hi


def background_claim(gaps_by_rho: dict, swapped_accuracy_by_rho: dict, treatment: str, baseline: str = DENSE,
                     n_boot: int = 2000, chance: float = CHANCE, margin: float = MARGIN) -> Claim:
    """Superiority of ``gap(baseline) - gap(treatment)`` (a smaller gap for ``treatment`` is positive)
    at the primary rho: the largest at which ``baseline``'s swapped-background accuracy (mean over
    seeds) is at least ``chance + margin`` (``background_rho``); none: INCONCLUSIVE (saturated).

    ``gaps_by_rho[rho][model]``: ``[S, N]`` gaps in points, ``swapped_accuracy_by_rho[rho][model]``:
    ``[S]`` in %, both as ``background_gaps`` returns them. Refuses (``ValueError``) empty dicts,
    a model missing at some rho, rhos outside [0, 1] or differing between the two dicts, fewer than
    two seeds or images, unpaired shapes, and NaN gaps or accuracies.
    """
    check_n_boot(n_boot)
    check_headroom(chance, margin)
    check_background(gaps_by_rho, swapped_accuracy_by_rho, {"baseline": baseline, "treatment": treatment}, chooser=baseline)
    rho = background_rho(swapped_accuracy_by_rho, baseline, chance, margin)
    bar = chance + margin
    claim = f"less background reliance ({treatment} vs {baseline})"
    rule = (f"superiority of gap({baseline}) - gap({treatment}) at the largest rho where {baseline}'s swapped-background "
            f"accuracy (mean over seeds) is >= {bar:g}% (chance {chance:g} + {margin:g}); {RULE_V2_INTERVAL}; "
            f"SUPPORTED if the 95% interval lies above 0 ({treatment}'s gap is smaller), NOT SUPPORTED if below")
    if rho is None:
        nan = float("nan")
        accuracies = ", ".join(f"rho={r:g}: {np.mean(swapped_accuracy_by_rho[r][baseline]):.1f}%" for r in _sorted(swapped_accuracy_by_rho))
        return Claim(claim=claim, metric="background gap: accuracy aligned - swapped (points): no rho qualifies",
                     baseline_name=baseline, baseline=nan, ersm=nan, difference=nan, lo=nan, hi=nan,
                     rule=f"{rule}; INCONCLUSIVE (saturated): {baseline}'s swapped accuracy is below {bar:g}% at every rho ({accuracies})",
                     verdict=INCONCLUSIVE)
    base, treat, diff, lo, hi = background_gap_difference(gaps_by_rho, treatment, baseline, rho, n_boot)
    return Claim(
        claim=claim,
        metric=f"background gap: accuracy aligned - swapped (points), trained with rho={rho:g} (the largest rho where "
               f"{baseline}'s swapped accuracy >= {bar:g}%)",
        baseline_name=baseline, baseline=base, ersm=treat, difference=diff, lo=lo, hi=hi,
        rule=rule, verdict=superiority(lo, hi))
