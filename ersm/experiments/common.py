"""Model families shared by the notebooks: the same data, recipe and budget for every model.

``family(base, seeds)`` maps a display name to one config per seed. Models differ only in the
fields named in ``FAMILY_FIELDS`` (built from ``ersm.layer.VARIANTS``, the one variant list); everything else comes from ``base`` (the profile's size).
"""
from __future__ import annotations

import time

import pandas as pd

from ersm.training.config import DATASETS, TrainConfig
from ersm.layer import VARIANTS
from ersm.training.inference import accuracy  # noqa: F401  (re-exported for the notebooks)
from ersm.metrics.stats import mean_ci
from ersm.data import load_split
from ersm.training.cache import get_model, is_cached, training_history, training_sessions

DENSE, CUTOUT = "dense", "dense + Cutout"
DISPLAY_NAMES = {variant: f"ERSM {variant}" for variant in VARIANTS}  # ersm.layer.VARIANTS -> the notebooks' name
PAPER, CALIBRATED, MEANFIELD, HARDCONCRETE = (DISPLAY_NAMES[v] for v in ("paper", "calibrated", "meanfield", "hardconcrete"))
ERSM_MODELS = tuple(DISPLAY_NAMES.values())  # the layer variants, each with its regulariser on
CONTROLS = {name: f"{name}, beta=0" for name in ERSM_MODELS}  # the same layer with the regulariser off
CONTROL, CALIBRATED_CONTROL = CONTROLS[PAPER], CONTROLS[CALIBRATED]
# the notebooks' model families: display name -> the config fields that make it (every other field comes from the base)
FAMILY_FIELDS = {
    DENSE: dict(model="dense"),
    CUTOUT: dict(model="dense", augmentation="cutout"),
    **{DISPLAY_NAMES[variant]: dict(model=variant) for variant in VARIANTS},
    **{CONTROLS[DISPLAY_NAMES[variant]]: dict(model=variant, beta=0.0) for variant in VARIANTS},
}
ALL_MODELS = tuple(FAMILY_FIELDS)  # dense, Cutout, then every variant and its control
WITHOUT_CUTOUT = tuple(name for name in ALL_MODELS if name != CUTOUT)  # what notebooks 02, 04 and 05 read


def base_config(canvas: int, n_train: int, n_test: int, epochs: int, dataset: str = "cluttered_digits",
                backbone: str = "small_cnn", **changes) -> TrainConfig:
    """The profile's shared recipe on ``dataset`` with ``backbone``. Cutout hides a third of the
    image side (a 48 canvas cuts out 16 px; DeVries and Taylor's ratio for 32 px is 1/2; we use
    1/3); on a real dataset the side is the dataset's image size and ``canvas`` is unused. A
    SmallCNN's ``width`` is passed on; the ResNets ignore it."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset={dataset!r} is unknown; choose one of {list(DATASETS)}")
    side = DATASETS[dataset].image_size or canvas
    return TrainConfig(canvas=canvas, n_train=n_train, n_test=n_test, epochs=epochs, cutout_size=max(1, side // 3),
                       dataset=dataset, backbone=backbone, **changes)


def not_applicable(claim: str, dataset: str, needs: str) -> dict:
    """Print ``<claim>: not applicable on <dataset> (needs <needs>)`` and return the results-JSON
    entry ``{"claim", "dataset", "status": "not applicable", "needs"}`` (no verdict row)."""
    print(f"{claim}: not applicable on {dataset} (needs {needs})")
    return {"claim": claim, "dataset": dataset, "status": "not applicable", "needs": needs}


def family(base: TrainConfig, seeds: list[int], names=(DENSE, PAPER, CALIBRATED),
           selected: dict[str, dict] | None = None) -> dict[str, list[TrainConfig]]:
    """Display name -> one config per seed.

    ``selected`` (from ``ersm.study.tuning.tune``) gives each model kind its tuned fields: dense's
    recipe for every family, a variant's ``lambda_unary``, ``lambda_pair`` and ``beta`` for it,
    and for its ``beta = 0`` control the same lambdas with ``beta = 0``. Without it every
    family uses the defaults (the paper's lambda_unary = lambda_pair = beta = 1).
    """
    unknown = [name for name in names if name not in FAMILY_FIELDS]
    if unknown:
        raise ValueError(f"names has unknown famil(ies) {unknown}; known are {list(FAMILY_FIELDS)}")
    out = {}
    for name in names:
        fields = dict(FAMILY_FIELDS[name])
        if selected is not None:
            kind = fields["model"]
            tuned = {**selected.get("dense", {}), **selected.get(kind, {})}
            fields = {**tuned, **fields}  # a control's beta=0 wins over the tuned beta
        out[name] = [base.replace(seed=seed, **fields) for seed in seeds]
    return out


def train_all(configs: dict[str, list[TrainConfig]]) -> dict[str, list]:
    """Trained models (from the cache when present), same layout as ``configs``; prints one summary line."""
    started = time.perf_counter()
    every = [config for runs in configs.values() for config in runs]
    cached = sum(is_cached(config) for config in every)
    models = {name: [get_model(config) for config in runs] for name, runs in configs.items()}
    print(f"{len(every)} models ready: {len(every) - cached} trained, {cached} from the cache, "
          f"in {(time.perf_counter() - started) / 60:.1f} min")
    return models


def histories(configs: dict[str, list[TrainConfig]]) -> pd.DataFrame:
    """Per-epoch training records: one row per (model, seed, epoch)."""
    rows = [{"model": name, "seed": config.seed, **record}
            for name, runs in configs.items() for config in runs for record in training_history(config)]
    return pd.DataFrame(rows)


def trained_on(configs: dict[str, list[TrainConfig]]) -> list[dict]:
    """Per cached model of ``configs``: the machines that trained it, from its ``sessions.jsonl``
    (``ersm.training.cache.training_sessions``). One record per ``(model, seed)``: ``config`` (the cache
    hash), ``machines`` (e.g. ``"cpu: <CPU model>, native kernels"``, and ``"not recorded"`` where epochs
    were trained before the records existed), ``sessions`` and ``train_seconds`` (the sum of the
    finished sessions' wall times). Configs not in the cache are left out."""
    rows = []
    for name, runs in configs.items():
        for config in runs:
            if not is_cached(config):
                continue
            sessions = training_sessions(config)
            starts = [s for s in sessions if s["event"] == "start"]
            machines = sorted({s["device"] if s["device"] != "cpu" else f"cpu: {s['cpu_model']}, {s['kernels']} kernels"
                               for s in starts})
            if not starts or min(s["from_epoch"] for s in starts) > 0:   # some epochs were trained before the records
                machines.append("not recorded")
            rows.append({"model": name, "seed": config.seed, "epochs": config.epochs, "config": config.digest(),
                         "machines": machines, "sessions": len(starts),
                         "train_seconds": round(sum(s["wall_seconds"] for s in sessions if s["event"] == "end"), 1)})
    return rows


def summarise(frame: pd.DataFrame, value: str, by: str = "model") -> pd.DataFrame:
    """Mean and Student-t 95% interval of ``value`` over seeds, per ``by`` group."""
    rows = []
    for key, group in frame.groupby(by, sort=False):
        mean, lo, hi = mean_ci(group[value].to_numpy())
        rows.append({by: key, "mean": mean, "ci_lo": lo, "ci_hi": hi, "n": len(group)})
    return pd.DataFrame(rows)


def paired_seed_difference(frame: pd.DataFrame, value: str, treatment: str, baseline: str) -> tuple[float, float, float]:
    """Mean over seeds of ``value(treatment) - value(baseline)`` paired by seed, with a t interval."""
    pivot = frame.pivot(index="seed", columns="model", values=value)
    return mean_ci((pivot[treatment] - pivot[baseline]).to_numpy())


def test_set(base: TrainConfig, background: str = "random"):
    """``(images, labels, masks)`` of the profile's test split."""
    return load_split(base, "test", background)
