"""Metrics against naive per-image, per-step loops written here, plus their contracts.

The naive references re-derive each protocol from `docs/protocols.md` with explicit Python loops
(one forward per step, pixel loops, sklearn's AUROC), independently of the batched code.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

import ersm
from ersm.metrics import (
    background_mass, bootstrap_ci, coefficient_of_variation, energy_pointing, feature_curves,
    gradcam_scores, input_curves, magnitude_scores, mean_ci, paired_bootstrap, pixel_auroc,
    pointing_game, random_scores, removal_schedule, topk_iou, trapezoid_auc,
)
from ersm.metrics.deletion import road_impute

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- naive references

def naive_removed(scores_nhw: torch.Tensor, k: int, steps: int, order: str) -> list[int]:
    """Token indices removed at step ``k`` of one image: sort by score, ties by index."""
    flat = scores_nhw.flatten().tolist()
    sign = -1 if order == "most" else 1
    ranking = sorted(range(len(flat)), key=lambda t: (sign * flat[t], t))
    count = math.floor(k * len(flat) / steps + 0.5)
    return ranking[:count]


def naive_blur(image: torch.Tensor) -> torch.Tensor:
    """Gaussian blur, kernel 11, sigma 5, reflect padding, as RISE's substrate: ``[C, H, W]``."""
    x = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-x ** 2 / (2 * 5.0 ** 2))
    g = (g / g.sum()).to(image.dtype)
    padded = F.pad(image.unsqueeze(0), (5, 5, 5, 5), mode="reflect")
    c = image.shape[0]
    out = F.conv2d(padded, g.view(1, 1, 1, 11).expand(c, 1, 1, 11), groups=c)
    return F.conv2d(out, g.view(1, 1, 11, 1).expand(c, 1, 11, 1), groups=c)[0]


def naive_feature_curve(head, features, scores, targets, steps, order, mode):
    probs, correct = torch.zeros(len(targets), steps + 1), torch.zeros(len(targets), steps + 1, dtype=torch.bool)
    h, w = scores.shape[1:]
    for n in range(len(targets)):
        for k in range(steps + 1):
            removed = naive_removed(scores[n], k, steps, order)
            f = features[n].clone() if mode == "deletion" else torch.zeros_like(features[n])
            for t in removed:
                f[:, t // w, t % w] = 0.0 if mode == "deletion" else features[n][:, t // w, t % w]
            logits = head(f.unsqueeze(0))[0]
            probs[n, k] = logits.softmax(0)[targets[n]]
            correct[n, k] = logits.argmax() == targets[n]
    return probs, correct


def naive_input_curve(model, images, scores, targets, steps, order, mode, fill):
    N, _, H, W = images.shape
    h, w = scores.shape[1:]
    ph, pw = H // h, W // w
    probs = torch.zeros(N, steps + 1)
    for n in range(N):
        substrate = torch.zeros_like(images[n]) if fill == "zero" else naive_blur(images[n])
        for k in range(steps + 1):
            removed = naive_removed(scores[n], k, steps, order)
            x = images[n].clone() if mode == "deletion" else substrate.clone()
            source = substrate if mode == "deletion" else images[n]
            for t in removed:
                i, j = t // w, t % w
                x[:, i * ph:(i + 1) * ph, j * pw:(j + 1) * pw] = source[:, i * ph:(i + 1) * ph, j * pw:(j + 1) * pw]
            probs[n, k] = model(x.unsqueeze(0))[0].softmax(0)[targets[n]]
    return probs


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    model = ersm.build_model(energy_mask={}).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


# ----------------------------------------------------------------------------- deletion

def test_trapezoid_auc_known_curves():
    flat = torch.ones(1, 17)
    linear = torch.linspace(1, 0, 17).unsqueeze(0)
    torch.testing.assert_close(trapezoid_auc(flat), torch.tensor([1.0]))
    torch.testing.assert_close(trapezoid_auc(linear), torch.tensor([0.5]))
    curves = torch.rand(4, 9, dtype=torch.float64)
    expected = torch.tensor([np.trapezoid(c, dx=1 / 8) for c in curves.numpy()])
    torch.testing.assert_close(trapezoid_auc(curves), expected)


@pytest.mark.parametrize("order", ["most", "least"])
@pytest.mark.parametrize("steps", [4, 7, 36])
def test_removal_schedule_removes_right_tokens(order, steps):
    scores = torch.randn(3, 6, 6, generator=torch.Generator().manual_seed(steps))
    keep = removal_schedule(scores, steps, order)
    assert keep.shape == (steps + 1, 3, 1, 6, 6) and keep.dtype == torch.bool
    for k in range(steps + 1):
        for n in range(3):
            removed = set(naive_removed(scores[n], k, steps, order))
            assert set((~keep[k, n, 0]).flatten().nonzero()[:, 0].tolist()) == removed
    assert keep[0].all() and not keep[-1].any()
    assert (keep[1:] <= keep[:-1]).all()  # nested: a removed token stays removed


def test_removal_schedule_ties():
    flat = torch.zeros(2, 3, 4)
    for order in ("most", "least"):  # ties go to the lower row-major index in both orders
        keep = removal_schedule(flat, 4, order)
        assert (~keep[1, :, 0].flatten(1)).nonzero()[:, 1].tolist() == [0, 1, 2] * 2
    a = removal_schedule(flat, 4, generator=torch.Generator().manual_seed(1))
    b = removal_schedule(flat, 4, generator=torch.Generator().manual_seed(1))
    c = removal_schedule(flat, 4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert ((~a).flatten(2).sum(2) == torch.tensor([0, 3, 6, 9, 12]).view(5, 1)).all()
    # random tie-breaking never reorders tokens whose scores differ
    scores = torch.tensor([[[3.0, 1.0], [1.0, 2.0]]])
    keep = removal_schedule(scores, 4, "most", generator=torch.Generator().manual_seed(0))
    assert (~keep[1, 0, 0]).flatten().tolist() == [True, False, False, False]
    assert (~keep[2, 0, 0]).flatten().tolist() == [True, False, False, True]


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
@pytest.mark.parametrize("order", ["most", "least"])
def test_feature_curves_match_naive_loop(small_model, mode, order):
    encoder, head = ersm.split_at(small_model, "layer2")
    images = torch.rand(3, 1, 48, 48, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 4, 9])
    with torch.no_grad():
        features = encoder(images)
        scores = magnitude_scores(features)
        expected, expected_correct = naive_feature_curve(head, features, scores, targets, 5, order, mode)
    probs, correct = feature_curves(head, features, scores, targets, steps=5, order=order, mode=mode,
                                    batch_size=7, return_correct=True)  # several chunks
    torch.testing.assert_close(probs, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(trapezoid_auc(probs), trapezoid_auc(expected), atol=1e-6, rtol=0)
    assert torch.equal(correct, expected_correct)
    torch.testing.assert_close(feature_curves(head, features, scores, targets, steps=5, order=order, mode=mode),
                               probs, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode, fill", [("deletion", "zero"), ("deletion", "blur"),
                                        ("insertion", "blur"), ("insertion", "zero")])
def test_input_curves_match_naive_loop(small_model, mode, fill):
    images = torch.rand(2, 1, 48, 48, generator=torch.Generator().manual_seed(2))
    scores = random_scores((2, 6, 6), seed=3)  # 8x8-pixel patches
    targets = torch.tensor([1, 7])
    with torch.no_grad():
        expected = naive_input_curve(small_model, images, scores, targets, 4, "most", mode, fill)
    probs = input_curves(small_model, images, scores, targets, steps=4, mode=mode, fill=fill, batch_size=6)
    torch.testing.assert_close(probs, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(trapezoid_auc(probs), trapezoid_auc(expected), atol=1e-6, rtol=0)


class OneTokenLogit(nn.Module):
    """Logits ``[sum_c x[:, c, i, j], 0]``: class 0 depends on one known token (or pixel) only."""

    def __init__(self, i: int, j: int):
        super().__init__()
        self.i, self.j = i, j

    def forward(self, x):
        logit = x[:, :, self.i, self.j].sum(1)
        return torch.stack([logit, torch.zeros_like(logit)], 1)


@pytest.mark.parametrize("where", ["features", "input"])
def test_deletion_finds_the_token_the_model_uses(where):
    features = torch.rand(2, 3, 4, 4) + 0.5
    targets = torch.zeros(2, dtype=torch.long)
    head = OneTokenLogit(2, 1)
    scores = torch.rand(2, 4, 4)
    scores[:, 2, 1] = 2.0  # the token the model uses ranks first
    curves = (lambda **kw: feature_curves(head, features, scores, targets, steps=16, **kw)) if where == "features" else \
        (lambda **kw: input_curves(head, features, scores, targets, steps=16, fill="zero", **kw))
    clean = torch.sigmoid(features[:, :, 2, 1].sum(1)).unsqueeze(1)
    most, least = curves(order="most"), curves(order="least")
    torch.testing.assert_close(most, torch.cat([clean, torch.full((2, 16), 0.5)], 1))
    torch.testing.assert_close(least, torch.cat([clean.expand(2, 16), torch.full((2, 1), 0.5)], 1))
    assert (trapezoid_auc(most) < trapezoid_auc(least)).all()
    inserted = curves(order="most", mode="insertion")
    torch.testing.assert_close(inserted, torch.cat([torch.full((2, 1), 0.5), clean.expand(2, 16)], 1))


def test_road_fill_imputes_from_neighbours_and_is_seeded(small_model):
    ramp = torch.arange(16.0).view(1, 1, 1, 16).expand(1, 2, 16, 16).clone()
    present = torch.ones(1, 1, 1, 16, 16, dtype=torch.bool)
    present[..., 4:10, 4:10] = False
    filled = road_impute(ramp, present, torch.Generator().manual_seed(0))[0, 0]
    assert torch.equal(filled[:, present[0, 0, 0]], ramp[0][:, present[0, 0, 0]])  # known pixels untouched
    hidden_error = (filled - ramp[0])[:, ~present[0, 0, 0]]
    assert 0.005 < hidden_error.std() < 0.02  # a linear ramp is reproduced up to the 0.01 noise
    images = torch.rand(2, 1, 48, 48, generator=torch.Generator().manual_seed(4))
    scores, targets = random_scores((2, 12, 12), seed=5), torch.tensor([3, 5])
    a = input_curves(small_model, images, scores, targets, steps=4, fill="road", seed=0)
    b = input_curves(small_model, images, scores, targets, steps=4, fill="road", seed=0, batch_size=5)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    with torch.no_grad():
        clean = small_model(images).softmax(1)[[0, 1], targets]
    torch.testing.assert_close(a[:, 0], clean, atol=1e-6, rtol=0)


def test_gradcam_scores_at_token_grid(small_model, capfd):
    images = torch.rand(3, 1, 48, 48, generator=torch.Generator().manual_seed(6))
    targets = torch.tensor([2, 0, 5])
    small_model.layer2.train()  # a submodule in train mode must be put back as it was
    (_, layer), = ersm.energy_masks(small_model)
    with torch.no_grad():
        small_model(images[:1])
    before = layer.terms
    maps = gradcam_scores(small_model, small_model.layer2, images, targets)
    assert small_model.layer2.training and not small_model.training
    # the layer's terms are those of the last forward before, not Grad-CAM's (whose graph they would keep alive)
    assert layer.terms is before and layer.terms.mask.grad_fn is None
    small_model.layer2.eval()
    assert maps.shape == (3, 12, 12) and torch.isfinite(maps).all() and (maps >= 0).all()
    assert all(p.grad is None for p in small_model.parameters())
    assert capfd.readouterr().err == ""
    # independent Grad-CAM: channel weights = spatial mean of d logit / d activation
    encoder, head = ersm.split_at(small_model, "layer2")
    acts = encoder(images).detach().requires_grad_(True)
    logit = head(acts)[torch.arange(3), targets].sum()
    (grads,) = torch.autograd.grad(logit, acts)
    expected = (grads.mean((2, 3), keepdim=True) * acts).sum(1).clamp(min=0)
    torch.testing.assert_close(maps, expected.detach(), atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- localisation

def localisation_case(seed=0, n=5):
    g = torch.Generator().manual_seed(seed)
    maps = torch.round(torch.rand(n, 6, 6, generator=g) * 5) / 5 - 0.2  # ties and negatives
    masks = torch.zeros(n, 1, 24, 24, dtype=torch.bool)
    for i in range(n):
        y, x, s = torch.randint(0, 16, (3,), generator=g).tolist()
        masks[i, 0, y:y + 3 + s % 6, x:x + 4 + s % 5] = True
    return maps, masks


def naive_upsampled(maps, size):
    return [F.interpolate(m.double()[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
            for m in maps]


@pytest.mark.parametrize("tolerance", [0, 2])
def test_pointing_game_matches_naive_loop(tolerance):
    maps, masks = localisation_case(1, n=8)
    hits = pointing_game(maps, masks, tolerance=tolerance)
    for up, mask, hit in zip(naive_upsampled(maps, (24, 24)), masks[:, 0], hits):
        best, where = -math.inf, None
        for i in range(24):
            for j in range(24):
                if up[i, j] > best:  # strict: the first maximum wins
                    best, where = up[i, j], (i, j)
        i, j = where
        near = [mask[a, b] for a in range(max(0, i - tolerance), min(24, i + tolerance + 1))
                for b in range(max(0, j - tolerance), min(24, j + tolerance + 1))]
        assert bool(hit) == any(near)


def test_pointing_game_tolerance_and_empty_masks():
    maps = torch.zeros(1, 10, 10)
    maps[0, 2, 2] = 1.0
    masks = torch.zeros(1, 10, 10, dtype=torch.bool)
    masks[0, 5:, 5:] = True
    assert pointing_game(maps, masks).tolist() == [False]
    assert pointing_game(maps, masks, tolerance=2).tolist() == [False]
    assert pointing_game(maps, masks, tolerance=3).tolist() == [True]
    with pytest.raises(ValueError, match=r"masks \[1\] are empty"):
        pointing_game(maps.expand(2, -1, -1), torch.stack([masks[0], torch.zeros(10, 10, dtype=torch.bool)]))


def test_mass_auroc_and_iou_match_naive_loops():
    maps, masks = localisation_case(2, n=6)
    share, auroc, iou = energy_pointing(maps, masks), pixel_auroc(maps, masks), topk_iou(maps, masks)
    for n, (up, mask) in enumerate(zip(naive_upsampled(maps, (24, 24)), masks[:, 0])):
        values, labels = up.flatten().tolist(), mask.flatten().tolist()
        inside = sum(max(v, 0.0) for v, y in zip(values, labels) if y)
        total = sum(max(v, 0.0) for v in values)
        assert abs(share[n].item() - inside / total) < 1e-6
        assert abs(auroc[n].item() - roc_auc_score(labels, values)) < 1e-6
        k = sum(labels)
        top = set(sorted(range(len(values)), key=lambda t: (-values[t], t))[:k])
        on = {t for t, y in enumerate(labels) if y}
        assert abs(iou[n].item() - len(top & on) / len(top | on)) < 1e-6
    torch.testing.assert_close(background_mass(maps, masks), 1 - share)


def test_localisation_edge_cases():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, :4] = True
    maps = torch.stack([torch.zeros(8, 8), -torch.ones(8, 8)])
    assert energy_pointing(maps, masks).isnan().all() and background_mass(maps, masks).isnan().all()
    full = torch.ones(2, 8, 8, dtype=torch.bool)
    assert pixel_auroc(torch.rand(2, 8, 8), full).isnan().all()
    perfect = masks.float() + 0.1 * torch.rand(2, 8, 8)
    torch.testing.assert_close(pixel_auroc(perfect, masks), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(topk_iou(perfect, masks), torch.ones(2, dtype=torch.float64))
    share = energy_pointing(perfect[:, None], masks[:, None])  # [N, 1, H, W] inputs work too
    assert ((share > 0.9) & (share < 1)).all()


# ----------------------------------------------------------------------------- statistics

def test_mean_ci_and_cv():
    mean, lo, hi = mean_ci([1.0, 2.0, 3.0, 4.0])
    half = 3.182446305284263 * np.std([1, 2, 3, 4], ddof=1) / 2  # t_{0.975, 3}
    assert (mean, lo, hi) == pytest.approx((2.5, 2.5 - half, 2.5 + half))
    assert all(isinstance(v, float) for v in (mean, lo, hi))
    single = mean_ci([0.7])
    assert single[0] == 0.7 and math.isnan(single[1]) and math.isnan(single[2])
    assert coefficient_of_variation([1.0, 2.0, 3.0]) == pytest.approx(0.5)
    assert math.isnan(coefficient_of_variation([1.0]))


def test_paired_bootstrap_covers_the_true_difference():
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(40):
        base = rng.normal(0, 5, 100)  # large shared per-image variation: pairing must remove it
        a, b = base + 0.3 + rng.normal(0, 0.2, 100), base + rng.normal(0, 0.2, 100)
        diff, lo, hi = paired_bootstrap(a, b, n_boot=500, seed=1)
        covered += lo <= 0.3 <= hi
        assert hi - lo < 0.2  # an unpaired interval would be about 3 wide
    assert covered >= 34  # nominal 95%
    first = paired_bootstrap(a, b, seed=3)
    assert first == paired_bootstrap(a, b, seed=3) and first != paired_bootstrap(a, b, seed=4)
    assert first[0] == pytest.approx(float(np.mean(a - b)))
    mean, lo, hi = bootstrap_ci(a, seed=0)
    assert lo < mean < hi and bootstrap_ci(a, seed=0) == (mean, lo, hi)


# ----------------------------------------------------------------------------- bad input

def _bad_inputs():
    s, f, t = torch.rand(2, 4, 4), torch.rand(2, 3, 4, 4), torch.zeros(2, dtype=torch.long)
    head = OneTokenLogit(0, 0)
    nan_scores = s.clone()
    nan_scores[0, 0, 0] = float("nan")
    empty = torch.zeros(2, 8, 8, dtype=torch.bool)
    return [
        (lambda: trapezoid_auc(torch.ones(5)), "curves"),
        (lambda: removal_schedule(s, 0), "steps=0"),
        (lambda: removal_schedule(s, 4, order="top"), "order='top'"),
        (lambda: removal_schedule(nan_scores, 4), "scores"),
        (lambda: removal_schedule(torch.rand(4, 4), 4), "scores"),
        (lambda: feature_curves(head, f, s, t, mode="erase"), "mode='erase'"),
        (lambda: feature_curves(head, f, torch.rand(2, 2, 2), t), "scores"),
        (lambda: feature_curves(head, f, s, t.float()), "targets"),
        (lambda: feature_curves(head, f, s, torch.tensor([0, 5])), "targets"),
        (lambda: feature_curves(head, f, s, t, batch_size=0), "batch_size=0"),
        (lambda: input_curves(head, f, s, t, fill="noise"), "fill='noise'"),
        (lambda: input_curves(head, torch.rand(2, 3, 10, 10), s, t), "scores"),
        (lambda: magnitude_scores(torch.rand(3, 4)), "features"),
        (lambda: pointing_game(s, empty), "masks"),
        (lambda: pointing_game(s, empty | True, tolerance=-1), "tolerance=-1"),
        (lambda: energy_pointing(s, empty.float()), "masks"),
        (lambda: topk_iou(s, empty), "masks"),
        (lambda: pixel_auroc(nan_scores, empty), "maps"),
        (lambda: mean_ci([1.0, 2.0], level=1.5), "level=1.5"),
        (lambda: mean_ci([]), "values"),
        (lambda: bootstrap_ci([1.0, float("nan")]), "values"),
        (lambda: bootstrap_ci([1.0, 2.0], n_boot=0), "n_boot=0"),
        (lambda: paired_bootstrap([1.0, 2.0], [1.0]), "a and b"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_inputs())))
def test_bad_inputs_raise_value_error_naming_the_argument(case):
    call, name = _bad_inputs()[case]
    with pytest.raises(ValueError, match=name.replace("[", r"\[")):
        call()


def test_check_count_is_the_one_count_check():
    """Issue 33: one form of the integer-count check (ersm.checks.check_count), naming argument and value."""
    import numpy as np
    from ersm.checks import check_count
    check_count("n_boot", 5, 1)
    check_count("n_boot", np.int64(5), 1)
    for bad in (True, 0, 2.0, "3", None):
        with pytest.raises(ValueError, match=rf"n_boot={bad!r} must be an integer >= 1 \(resamples\)".replace("'", ".")):
            check_count("n_boot", bad, 1, " (resamples)")
