"""Claim 2: sparsity emerges without a budget and adapts to each input (rules v2).

Definitions of rules v2 (`docs/rules.md#rules-v2`, section 02; written before the ``full`` run), applied to the masks
``m`` of the test images at the masked stage (``layer2`` in the notebooks):

- **Kept mass** of an image: ``k = mean_i m_i / max_j m_j`` over its token grid, the mean
  relative mask (``relative_mask``, ``kept_mass``). The paper's mask lies in (0, 0.5] and the
  BatchNorm after the stage undoes a uniform scale, so the shape of ``m`` is what counts.
  **Sparsity** is ``1 - k``. An image whose mask is 0 at every token (possible only for the
  hard-concrete gate) passes nothing: its relative mask is 0 everywhere and ``k = 0``.
- **Emerges** (``emergence_claim``): the ERSM model's sparsity exceeds that of the same layer
  trained with ``beta = 0``; superiority read on the rules-v2 interval of the difference of the
  mean over seeds of the per-seed mean sparsity, ``treatment - control`` (the hull of the
  two-level bootstrap over seeds and images and the t-interval of the per-seed differences,
  ``ersm.metrics.hierarchical.paired_rule_v2_interval``). Where v2 is silent v1 stands: the
  claim is NOT SUPPORTED if the ERSM model is degenerate (below) in any seed.
- **Adapts** (``adaptivity_claims``): per seed, the across-image coefficient of variation
  (``std`` with ``ddof=1`` over mean) of ``k`` exceeds that of each baseline: the ``beta = 0``
  control's mask, and the dense model's relative feature magnitude at the same stage (per image
  ``mean |x| / max |x|`` of the L2 norm over channels of the stage output, ``magnitude_frame``).
  Superiority against each on the seed-level t-interval of the paired difference; the claim is
  SUPPORTED only if both rows are, NOT SUPPORTED if either is, else INCONCLUSIVE. Degenerate
  treatment seeds are named in both rows (no veto: v1 had none for adaptivity).
- **Degenerate** (``degeneracy``), per seed over all its test tokens: spatial CV of ``m`` (the
  mean over images of the within-image ``std / mean`` of ``m``, ``std`` with ``ddof=1``; 0 for an
  image whose mask is 0 everywhere) below 0.01 (*uniform*), mean ``|0.5 - m|`` below 0.002
  (*collapsed at 0.5*), or 99th percentile of ``m`` below 0.002 (*collapsed to zero*). All three
  measures are reported per seed.

Also reported, outside every verdict:

- **True sparsity**: the share of tokens where ``m`` is exactly 0 at evaluation (only the
  hard-concrete gate gives exact zeros), and what skipping them would save in the convolutions
  that read the masked map (``skipped_macs``). Counted, not timed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from ersm.experiments import common
from ersm.experiments.rankings import MAGNITUDE, stage_view
from ersm.training.inference import predict
from ersm.layer import energy_masks
from ersm.metrics.hierarchical import paired_rule_v2_interval, seed_t_interval
from ersm.metrics.stats import coefficient_of_variation
from ersm.checks import check_count, check_seed_images
from ersm.study.verdicts import (MIN_UNITS, NOT_SUPPORTED, Claim, check_distinct, check_frame,
                            check_member, check_seed_pairs, overall_verdict, superiority)

SPATIAL_CV_BELOW = 0.01   # uniform
GAP_TO_HALF_BELOW = 0.002  # collapsed at 0.5
P99_BELOW = 0.002         # collapsed to zero
DEGENERACY_FLAGS = ("uniform", "collapsed_at_half", "collapsed_to_zero")
RULES = "rules v2 (docs/rules.md#rules-v2)"


# ----------------------------------------------------------------------------- per-image measures

def relative_mask(mask: torch.Tensor) -> torch.Tensor:
    """``m / max over the image`` for ``mask [N, ...]`` (each image's tokens after the first axis).

    An image whose mask is 0 everywhere gives 0 everywhere (it passes nothing).
    """
    peak = mask.flatten(1).amax(dim=1).view(-1, *([1] * (mask.dim() - 1)))
    return torch.where(peak > 0, mask / torch.where(peak > 0, peak, torch.ones_like(peak)), torch.zeros_like(mask))


def kept_mass(mask: torch.Tensor) -> np.ndarray:
    """Per image, ``k = mean_i m_i / max_j m_j`` over its tokens: ``mask [N, 1, h, w]`` (or ``[N, h, w]``) -> ``[N]``.

    Sparsity is ``1 - k``; an all-zero mask has ``k = 0``.
    """
    mask = _check_mask(mask, "mask")
    return relative_mask(mask.double()).flatten(1).mean(dim=1).numpy()


def zero_share(mask: torch.Tensor) -> np.ndarray:
    """Per image, the share of tokens where ``m`` is exactly 0 (true sparsity): ``[N]``."""
    mask = _check_mask(mask, "mask")
    return (mask == 0).flatten(1).double().mean(dim=1).numpy()


def spatial_cv(mask: torch.Tensor) -> np.ndarray:
    """Per image, the within-image ``std(m, ddof=1) / mean(m)`` over its tokens: ``[N]``; 0 for an all-zero image."""
    flat = _check_mask(mask, "mask").double().flatten(1)
    mean, std = flat.mean(dim=1), flat.std(dim=1)
    return torch.where(mean > 0, std / torch.where(mean > 0, mean, torch.ones_like(mean)), torch.zeros_like(mean)).numpy()


def degeneracy(mask: torch.Tensor) -> dict:
    """The three degeneracy measures of one seed's masks ``[N, 1, h, w]`` (all its test tokens), and the v2 flags.

    ``spatial_cv``: mean over images of the within-image CV of ``m``; ``mean_gap_to_half``: mean
    ``|0.5 - m|``; ``p99_mask``: 99th percentile of ``m`` (``numpy.quantile``, linear). A flag is
    set when its measure is strictly below its cut-off (0.01, 0.002, 0.002); ``degenerate`` when
    any flag is.
    """
    mask = _check_mask(mask, "mask").double()
    measures = {"spatial_cv": float(spatial_cv(mask).mean()),
                "mean_gap_to_half": float((0.5 - mask).abs().mean()),  # abs: the other variants may exceed 0.5
                "p99_mask": float(np.quantile(mask.flatten().numpy(), 0.99))}
    flags = {"uniform": measures["spatial_cv"] < SPATIAL_CV_BELOW,
             "collapsed_at_half": measures["mean_gap_to_half"] < GAP_TO_HALF_BELOW,
             "collapsed_to_zero": measures["p99_mask"] < P99_BELOW}
    return {**measures, **flags, "degenerate": any(flags.values())}


def relative_magnitude_kept_mass(magnitude: torch.Tensor) -> np.ndarray:
    """Per image, ``mean |x| / max |x|`` of a magnitude map ``[N, h, w]`` (the dense baseline's kept mass): ``[N]``."""
    if not isinstance(magnitude, torch.Tensor) or magnitude.dim() < 2 or magnitude.shape[0] == 0:
        shape = tuple(magnitude.shape) if isinstance(magnitude, torch.Tensor) else type(magnitude).__name__
        raise ValueError(f"magnitude must be a tensor [N, h, w] with N >= 1, got magnitude with shape {shape}")
    if not torch.isfinite(magnitude).all():
        raise ValueError("magnitude has NaN or inf values")
    return kept_mass(magnitude.abs())


# ----------------------------------------------------------------------------- skipped multiply-adds

@dataclass(frozen=True)
class SkippedMacs:
    """What skipping a model's exactly-zero mask tokens would save, per image (``skipped_macs``)."""

    layer: str                 # qualified name of the EnergyMask
    stage: str                 # the top-level child of the model that holds ``convs`` (the following stage)
    convs: tuple[str, ...]     # the Conv2d modules that read the masked map directly
    skipped: np.ndarray        # [N] int64: multiply-adds of ``convs`` whose input operand is a zero token
    conv_macs: int             # per image, every multiply-add of ``convs``
    stage_macs: int            # per image, every multiply-add of the Conv2d and Linear modules in ``stage``


def conv_skipped_macs(conv: nn.Conv2d, zero: torch.Tensor) -> np.ndarray:
    """Multiply-adds of ``conv`` that read an input token marked in ``zero [N, 1, H, W]`` (or ``[N, H, W]``): ``[N]``.

    Exact count: a zero token at input position ``p`` is read once by every (output position,
    kernel tap) pair whose tap lands on ``p``, and each such read costs ``in_channels / groups *
    out_channels`` multiply-adds (every output channel of the group times every input channel
    of that tap). The number of reads is the sum of a convolution of the zero indicator with a
    ones kernel of the conv's size, stride, padding and dilation, so stride, padding and
    dilation are taken into account exactly. Taps on the zero padding are not counted (a dense
    count includes them; they are not tokens of the map). Only ``padding_mode="zeros"`` is
    counted; other padding modes are refused (they read border tokens again).
    """
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
    if conv.padding_mode != "zeros":
        raise ValueError(f"conv has padding_mode={conv.padding_mode!r}; only 'zeros' is counted (other modes re-read border tokens)")
    zero = zero if zero.dim() == 4 else zero.unsqueeze(1)
    indicator = (zero != 0).double()
    ones = torch.ones(1, 1, *conv.kernel_size, dtype=torch.float64)
    reads = F.conv2d(indicator, ones, stride=conv.stride, padding=conv.padding, dilation=conv.dilation)
    per_read = conv.in_channels // conv.groups * conv.out_channels
    return (reads.flatten(1).sum(dim=1).round().to(torch.int64) * per_read).numpy()


def conv_macs(conv: nn.Conv2d, output_shape) -> int:
    """Every multiply-add of ``conv`` for one image with output ``[..., C_out, H_out, W_out]`` (padding taps included)."""
    h, w = output_shape[-2:]
    kh, kw = conv.kernel_size
    return int(h * w * conv.out_channels * (conv.in_channels // conv.groups) * kh * kw)


@torch.no_grad()
def skipped_macs(model: nn.Module, images: torch.Tensor, mask: torch.Tensor | None = None) -> SkippedMacs:
    """Multiply-adds that skipping the exactly-zero tokens of the model's mask would save, per image.

    What is counted: the convolutions that read the EnergyMask's output *directly* (found with
    hooks on one probe image, ``images[:1]``: every ``nn.Conv2d`` whose input is the very tensor the
    layer returned; in SmallCNN the first conv of ``layer3``, in a torchvision ResNet with the
    mask after ``layer3`` both ``layer4.0.conv1`` and ``layer4.0.downsample.0``), each counted
    exactly by ``conv_skipped_macs`` on the tokens where ``m == 0``. What skipping saves further
    downstream is not counted (the conv's output there is its bias, not zero). ``stage_macs``
    counts every Conv2d and Linear multiply-add of the top-level child of ``model`` that holds
    those convolutions (BatchNorm, activations and pooling are not counted), so
    ``skipped / stage_macs`` is the share of that stage's work. Counted, never timed.

    ``mask [N, 1, h, w]`` is the model's mask on ``images`` (computed with ``predict`` if
    omitted). Refuses (``ValueError``) a model without exactly one EnergyMask, a model where no
    Conv2d reads the masked map directly (e.g. pooling in between) or where those convolutions
    sit in different top-level children, a non-zero padding mode and a mask of another grid.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] == 0:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor [N, C, H, W] with N >= 1, got images with shape {shape}")
    layers = energy_masks(model)
    if len(layers) != 1:
        raise ValueError(f"model holds {len(layers)} EnergyMask layers ({[n for n, _ in layers]}); "
                         "skipped multiply-adds need exactly one")
    layer_name, layer = layers[0]
    captured, readers, macs = {}, [], {}
    handles = [layer.register_forward_hook(lambda _m, _i, output: captured.__setitem__("out", output))]
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            def before(module, inputs, name=name):
                if "out" in captured and inputs[0] is captured["out"]:
                    readers.append((name, module, tuple(inputs[0].shape[-2:])))
            handles.append(module.register_forward_pre_hook(before))
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            def after(module, _inputs, output, name=name):
                if isinstance(module, nn.Conv2d):
                    macs[name] = macs.get(name, 0) + conv_macs(module, output.shape)
                else:
                    macs[name] = macs.get(name, 0) + module.in_features * module.out_features * (output[0].numel() // module.out_features)
            handles.append(module.register_forward_hook(after))
    was_training, saved_terms = model.training, layer.terms
    model.eval()
    try:
        device = next(model.parameters()).device
        model(images[:1].to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
        layer.terms = saved_terms
    if not readers:
        raise ValueError(f"no nn.Conv2d reads the output of the EnergyMask at {layer_name!r} directly (something else, "
                         "such as pooling or an activation that copies, comes first); skipped multiply-adds are counted "
                         "only for convolutions that read the masked map")
    stages = {name.split(".")[0] for name, _, _ in readers}
    if len(stages) != 1:
        raise ValueError(f"the convolutions that read the masked map, {[n for n, _, _ in readers]}, sit in different "
                         f"top-level children {sorted(stages)}; one following stage is needed to count its share")
    stage = stages.pop()
    if mask is None:
        mask = predict(model, images).mask
    mask = _check_mask(mask, "mask")
    mask = mask if mask.dim() == 4 else mask.unsqueeze(1)
    for name, _, grid in readers:
        if tuple(mask.shape[-2:]) != grid:
            raise ValueError(f"mask has the grid {tuple(mask.shape[-2:])}, but {name!r} reads a map of {grid}; "
                             "pass the mask of this model on these images")
    zero = mask == 0
    skipped = sum(conv_skipped_macs(conv, zero) for _, conv, _ in readers)
    return SkippedMacs(layer=layer_name, stage=stage, convs=tuple(name for name, _, _ in readers),
                       skipped=np.asarray(skipped, dtype=np.int64),
                       conv_macs=sum(macs[name] for name, _, _ in readers),
                       stage_macs=sum(v for name, v in macs.items() if name == stage or name.startswith(stage + ".")))


# ----------------------------------------------------------------------------- per-seed frames

@dataclass
class MaskFrame:
    """What ``mask_frame`` returns; unpacks as ``frame, masks, per_image = mask_frame(...)``.

    ``frame``: one row per (model, seed). ``masks[(name, seed)]``: the masks ``[N, 1, h, w]``.
    ``per_image[name]``: ``[S, N]`` per-image sparsity ``1 - k``, rows in ascending seed order
    (``seeds[name]``), for ``emergence_claim``.
    """

    frame: pd.DataFrame
    masks: dict
    per_image: dict
    seeds: dict

    def __iter__(self):
        return iter((self.frame, self.masks, self.per_image))


FRAME_COLUMNS = ("mean_mask", "mean_sparsity", "kept_mass_cv", "spatial_cv", "mean_gap_to_half", "p99_mask",
                 *DEGENERACY_FLAGS, "degenerate", "zero_share", "skipped_macs", "conv_macs", "stage_macs",
                 "skipped_share")


def sweep_configs(base, sweep: dict[str, list], seed: int, recipe: dict | None = None) -> dict[str, list]:
    """Notebook 02's one-factor sweep around the paper's default (``lambda_unary = lambda_pair = beta = 1``).

    Returns ``"paper default"`` -> ``[the paper's layer at seed ``seed``]`` and, for every value of
    every field of ``sweep``, ``"<field>=<value>"`` -> ``[the same with that one field changed]``.
    ``recipe`` (the shared recipe that ``ersm.study.tuning`` selects on dense: ``lr``, ``weight_decay``)
    is applied to every row, so the sweep trains like every other model of the notebook; the
    anchor is then the paper family's tuning trial 0 when ``seed`` is ``ersm.study.tuning.TRIAL_SEED``.
    """
    if not isinstance(sweep, dict) or any(not isinstance(values, list) for values in sweep.values()):
        raise ValueError(f"sweep={sweep!r} must map config fields to lists of values")
    if recipe is not None and (not isinstance(recipe, dict) or set(recipe) - {"lr", "weight_decay"}):
        raise ValueError(f"recipe={recipe!r} must be a dict of lr and weight_decay (ersm.study.tuning's dense selection)")
    default = base.replace(model="paper", seed=seed, lambda_unary=1.0, lambda_pair=1.0, beta=1.0, **(recipe or {}))
    return {"paper default": [default],
            **{f"{key}={value}": [default.replace(**{key: value})] for key, values in sweep.items() for value in values}}


def configs(base, params: dict, selected: dict[str, dict]) -> tuple[dict[str, list], dict[str, list]]:
    """What notebook 02 trains: ``(families, sweep)``. The families are dense and every ERSM variant
    with its ``beta = 0`` control at ``SEEDS`` and their ``selected`` settings; the sweep is
    ``sweep_configs`` of ``SWEEP`` at ``SWEEP_SEED`` with dense's recipe."""
    families = common.family(base, params["SEEDS"], common.WITHOUT_CUTOUT, selected)
    return families, sweep_configs(base, params["SWEEP"], params["SWEEP_SEED"], recipe=selected["dense"])

def mask_frame(models: dict[str, list], configs: dict[str, list], images: torch.Tensor) -> MaskFrame:
    """Per (model, seed): the v2 sparsity statistics of the model's masks on ``images``.

    Columns: ``mean_mask``; ``mean_sparsity`` (mean over images of ``1 - k``); ``kept_mass_cv``
    (across-image CV of ``k``); the degeneracy measures and flags (``degeneracy``);
    ``zero_share`` (mean over images of the share of exact zeros of ``m``); ``skipped_macs``
    (mean over images of ``skipped_macs(...).skipped``), ``conv_macs`` and ``stage_macs`` (per
    image) and ``skipped_share = skipped_macs / stage_macs``.

    Refuses (``ValueError``) empty or unmatched ``models`` / ``configs``, a model without an
    EnergyMask, a seed listed twice for one model, and ``images`` that are not ``[N, C, H, W]``
    with ``N >= 2``.
    """
    if not isinstance(models, dict) or not models:
        raise ValueError(f"models must be a non-empty dict of name -> list of models, got models={models!r}")
    if not isinstance(configs, dict) or set(configs) != set(models):
        keys = sorted(configs) if isinstance(configs, dict) else type(configs).__name__
        raise ValueError(f"configs must be a dict with the same names as models ({sorted(models)}), got {keys}")
    for name in models:
        if len(models[name]) != len(configs[name]) or not models[name]:
            raise ValueError(f"models[{name!r}] has {len(models[name])} models and configs[{name!r}] "
                             f"{len(configs[name])} configs; they must match, one per seed, at least one")
        seeds = [config.seed for config in configs[name]]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"configs[{name!r}] lists seeds {seeds}; each seed once")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] < MIN_UNITS:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor [N, C, H, W] with N >= {MIN_UNITS}, got images with shape {shape}")
    rows, masks, per_image, seeds = [], {}, {}, {}
    for name in models:
        sparsities = {}
        for model, config in zip(models[name], configs[name]):
            mask = predict(model, images).mask
            if mask is None:
                raise ValueError(f"models[{name!r}] (seed {config.seed}) has no EnergyMask; sparsity needs an ERSM model")
            masks[name, config.seed] = mask
            k = kept_mass(mask)
            sparsities[config.seed] = 1.0 - k
            saved = skipped_macs(model, images, mask)
            skipped = float(saved.skipped.mean())
            rows.append({"model": name, "seed": config.seed, "mean_mask": mask.double().mean().item(),
                         "mean_sparsity": float((1.0 - k).mean()), "kept_mass_cv": coefficient_of_variation(k),
                         **degeneracy(mask), "zero_share": float(zero_share(mask).mean()),
                         "skipped_macs": skipped, "conv_macs": saved.conv_macs, "stage_macs": saved.stage_macs,
                         "skipped_share": skipped / saved.stage_macs})
        seeds[name] = tuple(sorted(sparsities))
        per_image[name] = np.stack([sparsities[seed] for seed in seeds[name]])
    return MaskFrame(pd.DataFrame(rows), masks, per_image, seeds)


def magnitude_frame(models: list, configs: list, images: torch.Tensor, stage: str = "layer2",
                    label: str = "dense (relative magnitude)") -> pd.DataFrame:
    """The dense baseline of the adaptivity claim: per seed, the relative feature magnitude's kept mass.

    For each model (the dense family, one per seed), ``stage_view(model, images, stage)``'s
    ``rankings[MAGNITUDE]`` (L2 norm over channels of the stage output, ``[N, h, w]``) gives per
    image ``mean |x| / max |x|``; the row holds its mean (``mean_kept_mass``) and across-image CV
    (``kept_mass_cv``). ``model`` is ``label`` in every row.
    """
    if not isinstance(models, (list, tuple)) or not models or len(models) != len(configs):
        raise ValueError(f"models and configs must be non-empty lists of equal length (one per seed), got "
                         f"{len(models) if isinstance(models, (list, tuple)) else type(models).__name__} models and "
                         f"{len(configs) if isinstance(configs, (list, tuple)) else type(configs).__name__} configs")
    rows = []
    for model, config in zip(models, configs):
        magnitude = stage_view(model, images, stage=stage, seed=config.seed).rankings[MAGNITUDE]
        k = relative_magnitude_kept_mass(magnitude)
        rows.append({"model": label, "seed": config.seed, "mean_kept_mass": float(k.mean()),
                     "kept_mass_cv": coefficient_of_variation(k)})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- the claims

def emergence_claim(per_image: dict, treatment: str, control: str, n_boot: int, seed: int = 0,
                    frame: pd.DataFrame | None = None) -> Claim:
    """Superiority of ``treatment``'s sparsity over ``control``'s, on the rules-v2 interval.

    ``per_image[name]`` is ``[S, N]`` per-image sparsity ``1 - k`` (``mask_frame``); row ``s`` of
    the two arms is the same seed, column ``i`` the same test image. The oriented difference is
    ``sparsity(treatment) - sparsity(control)`` (mean over seeds of each seed's mean over
    images), its interval ``paired_rule_v2_interval(treatment, control, n_boot=n_boot, seed=seed)``.

    ``frame`` (``mask_frame``'s per-seed frame) applies the v1 veto that v2 keeps: NOT SUPPORTED
    if ``treatment`` is degenerate in any seed (the ``degenerate`` column, v2 cut-offs). It also
    checks that both arms hold the same seeds, one row of ``per_image`` each. Without ``frame``
    the rule text says that the veto was not checked.

    Refuses (``ValueError``) before any work: ``per_image`` not a non-empty dict, a missing or
    repeated model, arrays that are not ``[S, N]`` with ``S, N >= 2``, NaN or inf, unpaired
    shapes, a bad ``n_boot`` or ``seed``, and a ``frame`` that lacks the columns or the seeds.
    """
    if not isinstance(per_image, dict) or not per_image:
        raise ValueError(f"per_image must be a non-empty dict of model -> [S, N] array, got per_image={per_image!r}")
    check_member("treatment", treatment, per_image, "per_image")
    check_member("control", control, per_image, "per_image")
    check_distinct("treatment", treatment, "control", control)
    a = check_seed_images(f"per_image[{treatment!r}]", per_image[treatment])
    b = check_seed_images(f"per_image[{control!r}]", per_image[control], shape=a.shape, paired_with=f"per_image[{treatment!r}]")
    check_count("n_boot", n_boot, 1)
    check_count("seed", seed, 0)
    degenerate_seeds = None
    if frame is not None:
        check_frame(frame, "frame", ("model", "seed", "mean_sparsity", "degenerate"))
        check_seed_pairs(frame, "frame", "mean_sparsity", {"treatment": treatment, "control": control})
        n_seeds = frame["seed"].nunique()
        if n_seeds != a.shape[0]:
            raise ValueError(f"frame holds {n_seeds} seeds but per_image[{treatment!r}] has {a.shape[0]} rows; "
                             "pass the frame and per_image of the same mask_frame call")
        rows = frame[frame["model"] == treatment]
        degenerate_seeds = sorted(rows.loc[rows["degenerate"].astype(bool), "seed"].tolist())
    diff, lo, hi = paired_rule_v2_interval(a, b, n_boot=n_boot, seed=seed)
    verdict = superiority(lo, hi)
    if degenerate_seeds is None:
        veto = "degeneracy veto not checked (no frame given)"
    elif degenerate_seeds:
        verdict = NOT_SUPPORTED
        veto = f"veto applied: {treatment} is degenerate in seed(s) {degenerate_seeds}"
    else:
        veto = "no degenerate treatment seed"
    return Claim(
        claim=f"sparsity emerges without a budget ({treatment})",
        metric="sparsity 1 - kept mass (k = mean m / max m per image), mean over seeds and images",
        baseline_name=control, baseline=float(b.mean(axis=1).mean()), ersm=float(a.mean(axis=1).mean()),
        difference=diff, lo=lo, hi=hi,
        rule=f"{RULES}: superiority of {treatment} - {control} (the same layer with beta=0), paired by seed and image; "
             f"95% interval = hull of the two-level bootstrap over seeds and images ({n_boot} resamples, shared image "
             f"draws, seed {seed}) and the t-interval of the per-seed differences; SUPPORTED if it lies above 0, "
             f"NOT SUPPORTED if below; NOT SUPPORTED if {treatment} is degenerate in any seed (spatial CV < "
             f"{SPATIAL_CV_BELOW}, mean |0.5 - m| < {GAP_TO_HALF_BELOW} or p99 of m < {P99_BELOW}); {veto}",
        verdict=verdict)


def adaptivity_claims(frame: pd.DataFrame, treatment: str, control: str,
                      magnitude: pd.DataFrame) -> tuple[list[Claim], str]:
    """Adaptivity (rules v2): the across-image CV of the kept mass beats both baselines, per seed.

    Two rows, each superiority on the seed-level 95% t-interval of the per-seed difference
    ``CV(treatment) - CV(baseline)`` (paired by seed): against ``control`` (the same layer with
    beta=0, its mask's kept mass; from ``frame``, ``mask_frame``'s per-seed frame) and against the
    dense model's relative magnitude (``magnitude``, ``magnitude_frame``: columns ``model``,
    ``seed``, ``kept_mass_cv``, one model). The overall verdict is SUPPORTED only if both rows
    are SUPPORTED, NOT SUPPORTED if either is NOT SUPPORTED, else INCONCLUSIVE.

    A treatment seed that is degenerate (``frame["degenerate"]``) does not change a verdict; both
    rows name it in their claim and rule text.

    Refuses (``ValueError``) an empty frame, missing columns or models, fewer than two seeds,
    seeds not shared by all three, NaN CVs, and a ``magnitude`` frame with more than one model.
    """
    check_frame(frame, "frame", ("model", "seed", "kept_mass_cv", "degenerate"))
    check_frame(magnitude, "magnitude", ("model", "seed", "kept_mass_cv"))
    labels = list(pd.unique(magnitude["model"]))
    if len(labels) != 1:
        raise ValueError(f"magnitude holds the models {labels}; it must hold one (the dense baseline)")
    label = labels[0]
    check_member("treatment", treatment, pd.unique(frame["model"]), "frame")
    check_member("control", control, pd.unique(frame["model"]), "frame")
    if label in (treatment, control):
        raise ValueError(f"magnitude's model {label!r} is also treatment or control; name the dense baseline apart")
    check_seed_pairs(frame, "frame", "kept_mass_cv", {"treatment": treatment, "control": control})
    arms = frame.loc[frame["model"].isin([treatment, control]), ["model", "seed", "kept_mass_cv"]]
    joined = pd.concat([arms, magnitude[["model", "seed", "kept_mass_cv"]]], ignore_index=True)
    check_seed_pairs(joined, "frame and magnitude", "kept_mass_cv", {"treatment": treatment, "magnitude's model": label})
    rows = frame[frame["model"] == treatment]
    degenerate_seeds = sorted(rows.loc[rows["degenerate"].astype(bool), "seed"].tolist())
    pivot = joined.pivot(index="seed", columns="model", values="kept_mass_cv")
    note = (f"; {treatment} is degenerate in seed(s) {degenerate_seeds} (reported, no veto)" if degenerate_seeds
            else "; no degenerate treatment seed")
    claims = []
    for baseline, what in ((control, "the same layer with beta=0"), (label, "the dense model's relative feature magnitude")):
        diff, lo, hi = seed_t_interval((pivot[treatment] - pivot[baseline]).to_numpy())
        claims.append(Claim(
            claim=f"sparsity adapts to the input ({treatment} vs {baseline})"
                  + (f"; degenerate seeds {degenerate_seeds}" if degenerate_seeds else ""),
            metric="across-image CV of the kept mass k, per seed, mean over seeds",
            baseline_name=baseline, baseline=float(pivot[baseline].mean()), ersm=float(pivot[treatment].mean()),
            difference=diff, lo=lo, hi=hi,
            rule=f"{RULES}: superiority of CV({treatment}) - CV({baseline}) ({what}), 95% t-interval over seeds of the "
                 f"paired per-seed difference; SUPPORTED if it lies above 0, NOT SUPPORTED if below; adaptivity is "
                 f"SUPPORTED only if both baselines are beaten{note}",
            verdict=superiority(lo, hi)))
    return claims, overall_verdict([claim.verdict for claim in claims])


def what_it_tracks(masks: dict, name: str, metadata: dict) -> pd.DataFrame:
    """Spearman correlation of the per-image kept mass with clutter and digit size, over seeds.

    A seed whose kept mass is the same for every image has no defined correlation; ``n``
    counts the seeds that enter each row.
    """
    rows = []
    for (model_name, seed), mask in masks.items():
        if model_name != name:
            continue
        kept = kept_mass(mask)
        for factor in ("n_distractors", "digit_area"):
            # a constant kept mass (e.g. a uniform mask) has no defined correlation
            rho = spearmanr(kept, metadata[factor]).statistic if np.ptp(kept) > 0 else float("nan")
            rows.append({"seed": seed, "factor": factor, "spearman": rho})
        by_background = pd.Series(kept).groupby(np.asarray(metadata["background"])).mean()
        rows.append({"seed": seed, "factor": "background (range of group means)", "spearman": by_background.max() - by_background.min()})
    return pd.DataFrame(rows).groupby("factor")["spearman"].agg(["mean", "min", "max", "count"]).rename(columns={"count": "n"}).reset_index()


# ----------------------------------------------------------------------------- input checks

def _check_mask(mask, name: str) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.dim() not in (3, 4) or mask.shape[0] == 0 or (mask.dim() == 4 and mask.shape[1] != 1):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{name} must be a tensor [N, 1, h, w] or [N, h, w] with N >= 1, got {name} with shape {shape}")
    return mask
