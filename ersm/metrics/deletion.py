"""Deletion and insertion curves: does a token ranking find what the classifier uses?

Protocol (RISE; Petsiuk et al., 2018, public code eclique/RISE ``evaluation.py``): rank the
tokens by a score map, most important first; *deletion* removes ``1/steps`` of them per step
and records the softmax probability of the target class (lower area = better ranking);
*insertion* starts from a substrate and puts tokens back, most important first (higher area =
better). The area is the trapezoid rule over the ``steps + 1`` points spanning 0..100%.
Removing the *least* important first with ``order="least"`` is the "pruning" reading of the
paper's claim (`docs/protocols.md#lerf-the-pruning-reading`): accuracy should survive, and higher is better.

Two places to remove tokens:
- ``feature_curves``: on the feature map after the Energy-Mask Layer, through the rest of the
  network (a stage view's ``head``: ``ersm.split_at``'s second half, or a hook-based
  ``rankings.HookedHead``); removed tokens are zeroed, as the mask itself would do.
- ``input_curves``: on the image, each token being an ``(H/h) x (W/w)`` patch. Substrates:
  zeros (RISE deletion), a Gaussian blur (RISE insertion: kernel 11, sigma 5), or ROAD's noisy
  linear imputation from the 8 neighbours (Rong et al., 2022, via ``pytorch_grad_cam``'s
  ``NoisyLinearImputer``, noise std 0.01), so the model cannot key on the fill pattern.

Conventions: every score map is ``[N, h, w]`` with *higher = more important*; ties are broken by
token index (row-major, stable sort) unless a ``generator`` asks for random tie-breaking; a
random ranking is a random score map (``random_scores``). Step ``k`` removes
``round(k / steps * h * w)`` tokens, rounding halves up.

Deviations, stated: the target class is whatever ``targets`` says (RISE uses the class
predicted on the clean image; pass ``model(x).argmax(1)`` to match). ROAD is defined for
partial removal (percentiles 20..80); where nothing is left to impute from (100% removed, or
the start of a ROAD insertion) we fill with zeros.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import numpy as np
import torch
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from ersm.checks import check_count
from ersm.layer import energy_masks

ORDERS = ("most", "least")
MODES = ("deletion", "insertion")
FILLS = ("zero", "blur", "road")
BLUR_KERNEL, BLUR_SIGMA = 11, 5.0  # RISE's insertion substrate
ROAD_NOISE = 0.01


# ----------------------------------------------------------------------------- areas, schedules

def trapezoid_auc(curves: torch.Tensor) -> torch.Tensor:
    """RISE's area ``(sum(y) - y[0]/2 - y[-1]/2) / (S - 1)``: ``curves [N, S] -> [N]``.

    The S points are taken as evenly spaced over 0..100% removed, so the area is in the units
    of ``y`` (a probability curve gives an area in [0, 1]).
    """
    curves = torch.as_tensor(curves)
    if curves.dim() != 2 or curves.shape[1] < 2:
        raise ValueError(f"curves must be [N, S] with S >= 2 points, got curves with shape {tuple(curves.shape)}")
    curves = curves.to(torch.promote_types(curves.dtype, torch.float32))
    return (curves.sum(1) - curves[:, 0] / 2 - curves[:, -1] / 2) / (curves.shape[1] - 1)


def removal_counts(num_tokens: int, steps: int) -> torch.Tensor:
    """``[steps + 1]`` tokens removed by each step: ``round(k / steps * num_tokens)``, halves up."""
    k = torch.arange(steps + 1)
    return (2 * k * num_tokens + steps) // (2 * steps)  # exact integer rounding, no float ties


def removal_schedule(scores: torch.Tensor, steps: int, order: str = "most",
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Keep masks for a deletion run: ``scores [N, h, w] -> keep [steps + 1, N, 1, h, w]`` (bool).

    ``keep[k, n]`` is False for the ``round(k / steps * h * w)`` tokens of image ``n`` that come
    first in the removal order (highest scores first for ``order="most"``, lowest first for
    ``"least"``). Ties go to the lower row-major index, or, with a ``generator``, to a random
    permutation drawn from it. The masks of one image are nested: each step removes a superset.
    """
    _check_scores(scores)
    _check_steps(steps)
    _check_choice("order", order, ORDERS)
    n, h, w = scores.shape
    flat = scores.reshape(n, h * w)
    if generator is not None:  # shuffle positions first, so a stable sort breaks ties at random
        perm = torch.rand(n, h * w, generator=generator, device=generator.device).argsort(1).to(flat.device)
        ranked = perm.gather(1, _stable_argsort(flat.gather(1, perm), descending=order == "most"))
    else:
        ranked = _stable_argsort(flat, descending=order == "most")
    # rank[n, t] = position of token t in the removal order of image n
    rank = torch.empty_like(ranked).scatter_(1, ranked, torch.arange(h * w, device=flat.device).expand(n, -1))
    counts = removal_counts(h * w, steps).to(flat.device)
    keep = rank.unsqueeze(0) >= counts.view(-1, 1, 1)  # [S, N, h*w]
    return keep.view(steps + 1, n, 1, h, w)


def _stable_argsort(x: torch.Tensor, descending: bool) -> torch.Tensor:
    """Argsort along dim 1; equal values keep their index order."""
    return torch.sort(x, dim=1, descending=descending, stable=True).indices


# ----------------------------------------------------------------------------- curves

@torch.no_grad()
def feature_curves(head: nn.Module, features: torch.Tensor, scores: torch.Tensor, targets: torch.Tensor,
                   steps: int = 16, order: str = "most", mode: str = "deletion", batch_size: int = 512,
                   return_correct: bool = False):
    """Target-class probability as feature tokens are removed (or put back).

    Args:
        head: the network after the cut, ``head(features) == model(images)`` (a stage view's
            ``head``, e.g. ``ersm.split_at(model, stage)[1]``); run in eval mode.
        features: ``[N, C, h, w]``, the stage's output on the clean images.
        scores: ``[N, h, w]`` token ranking, higher = more important.
        targets: ``[N]`` class indices whose probability is tracked.
        mode: ``"deletion"`` zeroes removed tokens; ``"insertion"`` starts from all zeros and
            puts tokens back in ``order`` (``"most"``: most important first).
        batch_size: rows per forward; the ``steps + 1`` variants of an image share a batch.
        return_correct: also return ``[N, steps + 1]`` bool, ``argmax == target`` per step.

    Returns ``probs [N, steps + 1]`` (and ``correct`` if asked).
    """
    _check_features(features)
    _check_batch(features, scores, targets, steps, order, mode, batch_size)
    if scores.shape[1:] != features.shape[2:]:
        raise ValueError(f"scores with shape {tuple(scores.shape)} must match the token grid of "
                         f"features with shape {tuple(features.shape)}")
    keep = removal_schedule(scores, steps, order)
    present = keep if mode == "deletion" else ~keep

    def variants(idx: torch.Tensor) -> torch.Tensor:
        return (features[idx].unsqueeze(0) * present[:, idx].to(features.dtype)).flatten(0, 1)

    probs, correct = _curves(head, variants, targets, steps + 1, batch_size)
    return (probs, correct) if return_correct else probs


@torch.no_grad()
def input_curves(model: nn.Module, images: torch.Tensor, scores: torch.Tensor, targets: torch.Tensor,
                 steps: int = 16, order: str = "most", mode: str = "deletion", fill: str | None = None,
                 batch_size: int = 512, seed: int = 0, return_correct: bool = False):
    """Target-class probability as image patches are removed (or revealed).

    Args:
        model: the whole classifier, run in eval mode.
        images: ``[N, C, H, W]``; ``H`` and ``W`` must be multiples of the score grid's ``h, w``.
        scores: ``[N, h, w]`` token ranking (``h = H``, ``w = W`` for a pixel ranking).
        fill: the substrate for hidden patches: ``"zero"``, ``"blur"`` (Gaussian, kernel 11,
            sigma 5) or ``"road"`` (noisy linear imputation). Default: RISE's, i.e. ``"zero"``
            for deletion and ``"blur"`` for insertion.
        seed: seeds ROAD's imputation noise (the global torch RNG is left untouched).
        Others as in :func:`feature_curves`.

    Returns ``probs [N, steps + 1]`` (and ``correct`` if asked).
    """
    _check_features(images, name="images")
    _check_batch(images, scores, targets, steps, order, mode, batch_size)
    fill = ("zero" if mode == "deletion" else "blur") if fill is None else fill
    _check_choice("fill", fill, FILLS)
    (H, W), (h, w) = images.shape[-2:], scores.shape[-2:]
    if H % h or W % w:
        raise ValueError(f"images of size {H}x{W} do not split into the scores grid {h}x{w}: "
                         f"scores with shape {tuple(scores.shape)} needs H % h == W % w == 0")
    keep = removal_schedule(scores, steps, order)
    keep = keep.repeat_interleave(H // h, dim=-2).repeat_interleave(W // w, dim=-1)  # nearest
    present = keep if mode == "deletion" else ~keep  # [S, N, 1, H, W]

    if fill == "road":
        noise = torch.Generator().manual_seed(seed)

        def variants(idx: torch.Tensor) -> torch.Tensor:
            return road_impute(images[idx], present[:, idx], noise).flatten(0, 1)
    else:
        substrate = torch.zeros_like(images) if fill == "zero" else blur(images)

        def variants(idx: torch.Tensor) -> torch.Tensor:
            return torch.where(present[:, idx], images[idx].unsqueeze(0), substrate[idx].unsqueeze(0)).flatten(0, 1)

    probs, correct = _curves(model, variants, targets, steps + 1, batch_size)
    return (probs, correct) if return_correct else probs


def blur(images: torch.Tensor) -> torch.Tensor:
    """RISE's insertion substrate: ``[N, C, H, W]`` Gaussian-blurred (kernel 11, sigma 5)."""
    return gaussian_blur(images, kernel_size=[BLUR_KERNEL, BLUR_KERNEL], sigma=[BLUR_SIGMA, BLUR_SIGMA])


def road_impute(images: torch.Tensor, present: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """ROAD fill: ``images [n, C, H, W]``, ``present [S, n, 1, H, W]`` -> ``[S, n, C, H, W]``.

    Each hidden pixel is the weighted mean of its in-grid 8 neighbours (1/6 edge, 1/12
    diagonal), hidden neighbours being unknowns too: one sparse linear system per image and
    step, set up by ``pytorch_grad_cam``'s ``NoisyLinearImputer.setup_sparse_system`` and solved
    with ``scipy.sparse.linalg.spsolve``; then N(0, 0.01^2) noise from ``generator`` is added
    to the hidden pixels. Fully visible variants are the image; fully hidden ones are zeros.
    """
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer, neighbors_weights
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import spsolve

    s, n = present.shape[:2]
    channels = images.shape[1]
    out = images.detach().cpu().unsqueeze(0).repeat(s, 1, 1, 1, 1)
    known_all = present[:, :, 0].cpu()
    for k in range(s):  # a sparse solve per variant; there is no batched solver for this
        for i in range(n):
            known = known_all[k, i]
            if known.all():
                continue
            hidden = ~known
            if not known.any():
                out[k, i] = 0.0
                continue
            system, rhs = NoisyLinearImputer.setup_sparse_system(
                known.numpy().astype(np.float64), out[k, i].numpy().astype(np.float64), neighbors_weights)
            solved = torch.from_numpy(np.asarray(spsolve(csc_matrix(system), rhs)).reshape(-1, channels).T)
            noise = torch.randn(channels, int(hidden.sum()), generator=generator, dtype=torch.float64)
            out[k, i][:, hidden] = (solved + ROAD_NOISE * noise).to(out.dtype)
    return out.to(images.device)


# ----------------------------------------------------------------------------- rankings

def random_scores(shape, seed: int = 0) -> torch.Tensor:
    """Uniform random scores of ``shape`` (e.g. ``(N, h, w)``): the random-ranking baseline."""
    return torch.rand(tuple(shape), generator=torch.Generator().manual_seed(seed))


def magnitude_scores(features: torch.Tensor) -> torch.Tensor:
    """Feature-magnitude ranking: ``features [N, C, h, w] -> [N, h, w]``, L2 norm over channels."""
    _check_features(features)
    return features.norm(dim=1)


def gradcam_scores(model: nn.Module, target_layer: nn.Module, images: torch.Tensor,
                   targets: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., 2017) at the token grid of ``target_layer``: ``[N, h, w]``.

    ``pytorch_grad_cam.GradCAM`` runs the forward and backward passes and holds the layer's
    activations and gradients; its ``get_cam_image`` (channel weights = spatial mean of the
    gradients, weighted sum over channels) is then applied to them at the layer's own
    resolution, and clamped at 0 as Grad-CAM does. We skip the library's last step (a resize
    to the input and a per-image min-max rescale), so nothing is interpolated; the maps are
    unnormalised (rankings and mass shares do not depend on a per-image positive scale).

    The model runs in eval mode; its training flags, parameter ``.grad`` and the ``terms`` of
    every EnergyMask are restored afterwards. (The library keeps the graph for a second backward
    pass, and a layer's ``terms`` from this forward would hold it, with every activation of the
    ``N`` images, for as long as the model lives: about 1 GB per model at 1,000 images of 48 px.)
    The gradient reaches the layer even when every parameter is frozen.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    _check_features(images, name="images")
    _check_targets(targets, images.shape[0])
    if not any(module is target_layer for module in model.modules()):
        raise ValueError(f"target_layer={type(target_layer).__name__} is not a module of the model")
    saved_grads = [(p, p.grad) for p in model.parameters()]
    saved_terms = [(layer, layer.terms) for _, layer in energy_masks(model)]
    with _evaluating(model), torch.enable_grad():
        cam = GradCAM(model=model, target_layers=[target_layer])
        try:
            class_targets = [ClassifierOutputTarget(int(t)) for t in targets]
            # an input that needs grad makes the layer's output need grad even if frozen
            cam(input_tensor=images.detach().clone().requires_grad_(True), targets=class_targets)
            store = cam.activations_and_grads
            token_cam = cam.get_cam_image(images, target_layer, class_targets,
                                          store.activations[0].numpy(), store.gradients[0].numpy())
        finally:
            cam.activations_and_grads.release()
    for p, grad in saved_grads:
        p.grad = grad
    for layer, terms in saved_terms:
        layer.terms = terms
    return torch.from_numpy(np.maximum(token_cam, 0)).to(torch.float32)


# ----------------------------------------------------------------------------- shared machinery

def _curves(model: nn.Module, variants: Callable[[torch.Tensor], torch.Tensor], targets: torch.Tensor,
            num_steps: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` on every step-variant of every image, a chunk of images at a time.

    ``variants(idx)`` returns ``[num_steps * len(idx), ...]``, step-major. Returns
    ``probs, correct``, both ``[N, num_steps]``.
    """
    n = targets.shape[0]
    per_chunk = max(1, batch_size // num_steps)
    probs, correct = [], []
    with _evaluating(model):
        for start in range(0, n, per_chunk):
            idx = torch.arange(start, min(start + per_chunk, n))
            logits = model(variants(idx)).view(num_steps, len(idx), -1)
            if start == 0 and int(targets.max()) >= logits.shape[-1]:
                raise ValueError(f"targets contains class {int(targets.max())}, but the model has {logits.shape[-1]} outputs")
            t = targets[idx].to(logits.device).view(1, -1, 1).expand(num_steps, -1, 1)
            probs.append(logits.softmax(-1).gather(-1, t)[..., 0].T)
            correct.append((logits.argmax(-1) == t[..., 0]).T)
    return torch.cat(probs), torch.cat(correct)


@contextmanager
def _evaluating(model: nn.Module):
    """Eval mode inside the block; every submodule's own training flag restored after."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} must be one of {choices}")


def _check_steps(steps) -> None:
    check_count("steps", steps, 1)


def _check_scores(scores) -> None:
    if not isinstance(scores, torch.Tensor) or scores.dim() != 3:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a tensor [N, h, w], got scores with shape {shape}")
    if scores.is_complex() or not torch.isfinite(scores).all():
        raise ValueError("scores contains non-finite values (NaN or inf); the ranking is undefined")


def _check_features(x, name: str = "features") -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a tensor [N, C, h, w], got {name} with shape {shape}")


def _check_targets(targets, n: int) -> None:
    if (not isinstance(targets, torch.Tensor) or targets.shape != (n,) or targets.is_floating_point()
            or (n and int(targets.min()) < 0)):
        shape = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise ValueError(f"targets must be {n} non-negative integer class indices [N], got targets with shape {shape}")


def _check_batch(x, scores, targets, steps, order, mode, batch_size) -> None:
    _check_scores(scores)
    if scores.shape[0] != x.shape[0]:
        raise ValueError(f"scores has {scores.shape[0]} maps but there are {x.shape[0]} inputs")
    _check_targets(targets, x.shape[0])
    _check_steps(steps)
    _check_choice("order", order, ORDERS)
    _check_choice("mode", mode, MODES)
    check_count("batch_size", batch_size, 1)
