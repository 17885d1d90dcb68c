"""Rules v2 for claims 01 (accuracy) and 02 (emergence, adaptivity), on inputs with a known answer.

A true effect gives SUPPORTED, no effect INCONCLUSIVE, a reversed effect NOT SUPPORTED, and the
orientation of each difference is pinned. The measures are checked by hand on tiny masks (kept
mass, exact zeros, degeneracy at both sides of each v2 cut-off) and the skipped multiply-adds by
hand and against a brute-force loop, on a tiny conv, on a real SmallCNN with a hard-concrete gate
and on a torchvision ResNet-18. Bad input is refused with a ValueError naming the argument.
"""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from scipy import stats
from torch import nn

import ersm
from ersm.study.setup import base_of
from ersm.experiments import accuracy, common, sparsity
from ersm.experiments.common import DENSE
from ersm.training.inference import predict
from ersm.metrics.hierarchical import paired_rule_v2_interval
from ersm.metrics.power import noninferiority_power, seeds_for_noninferiority
from ersm.metrics.stats import coefficient_of_variation
from ersm.study.profiles import parameters
from ersm.study.results import json_safe
from ersm.study.verdicts import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, overall_verdict
from helpers.bad_input import refusal_test

ERSM_NAME, CONTROL, MAGNITUDE = "ERSM x", "ERSM x, beta=0", "dense (relative magnitude)"
N_BOOT = 400


def t_interval(values) -> tuple[float, float, float]:
    """An independent Student-t 95% interval of the mean."""
    x = np.asarray(values, dtype=np.float64)
    half = stats.t.ppf(0.975, df=x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return x.mean(), x.mean() - half, x.mean() + half


def seed_frame(column: str, values: dict[str, list[float]], **extra) -> pd.DataFrame:
    """One row per (model, seed) with ``column``; seeds 0..n-1; ``extra`` columns constant."""
    return pd.DataFrame([{"model": model, "seed": seed, column: value, **extra}
                         for model, vals in values.items() for seed, value in enumerate(vals)])


# ============================================================================= 01 accuracy

DENSE_ACC = [90.0, 80.0, 70.0, 85.0]


def accuracy_frame(deltas, others=None) -> pd.DataFrame:
    return seed_frame("accuracy", {DENSE: DENSE_ACC, ERSM_NAME: [d + a for d, a in zip(DENSE_ACC, deltas)],
                                   "noise": [0.0, 100.0, 0.0, 100.0], **(others or {})})


@pytest.mark.parametrize("deltas, margin, expected", [
    ([0.1, -0.1, 0.0, 0.05], 1.0, SUPPORTED),        # the same accuracy, tight: non-inferior
    ([2.0, 1.5, 2.5, 1.8], 1.0, SUPPORTED),          # better is non-inferior too
    ([3.0, -3.0, 0.5, -1.0], 1.0, INCONCLUSIVE),     # no effect, but too noisy to rule out a loss
    ([-5.0, -5.1, -4.9, -5.2], 1.0, NOT_SUPPORTED),  # clearly worse than the margin (reversed)
    ([-0.5, -0.45, -0.55, -0.5], 1.0, SUPPORTED),    # a loss inside the margin ...
    ([-0.5, -0.45, -0.55, -0.5], 0.25, NOT_SUPPORTED),  # ... outside a tighter one
])
def test_accuracy_claim(deltas, margin, expected):
    claim = accuracy.accuracy_claim(accuracy_frame(deltas), ERSM_NAME, margin)
    mean, lo, hi = t_interval(deltas)
    assert claim.verdict == expected
    # orientation: ERSM - dense, paired by seed
    assert claim.difference == pytest.approx(mean) and claim.lo == pytest.approx(lo) and claim.hi == pytest.approx(hi)
    assert claim.baseline_name == DENSE and claim.baseline == pytest.approx(np.mean(DENSE_ACC))
    assert claim.ersm == pytest.approx(np.mean(DENSE_ACC) + np.mean(deltas))
    assert "v2" in claim.rule and f"margin {margin} points" in claim.rule and f"-{margin}" in claim.rule


def test_accuracy_claim_pairs_by_seed_not_by_row_order():
    frame = seed_frame("accuracy", {DENSE: DENSE_ACC, ERSM_NAME: [a + 0.2 for a in DENSE_ACC]})
    claim = accuracy.accuracy_claim(frame.sample(frac=1.0, random_state=0), ERSM_NAME, 1.0)
    assert claim.difference == pytest.approx(0.2) and claim.lo == pytest.approx(0.2) and claim.verdict == SUPPORTED


def test_power_table_matches_seeds_for_noninferiority():
    deltas = [0.5, -0.7, 0.2, -0.4]                  # sd about 0.55: more seeds than 4 at margin 0.5
    tight = [0.01, -0.01, 0.02, 0.0]
    frame = accuracy_frame(deltas, others={"tight": [d + a for d, a in zip(DENSE_ACC, tight)]})
    table = accuracy.power_table(frame, [ERSM_NAME, "tight"], 0.5)
    assert list(table["model"]) == [ERSM_NAME, "tight"] and set(table["baseline"]) == {DENSE}
    for row, values in zip(table.itertuples(), (deltas, tight)):
        sd = np.std(values, ddof=1)
        n = seeds_for_noninferiority(sd, 0.5, power=0.8, alpha=0.025)
        assert row.sd == pytest.approx(sd) and row.seeds_needed == n and row.seeds == 4
        assert row.power == pytest.approx(noninferiority_power(4, sd, 0.5, alpha=0.025))
        assert row.underpowered == (4 < n)
    assert table["underpowered"].tolist() == [True, False]  # pinned: the noisy arm needs more than 4 seeds
    assert table.loc[0, "seeds_needed"] > 4 and table.loc[0, "power"] < 0.8 < table.loc[1, "power"]
    # a larger target power never asks for fewer seeds
    assert accuracy.power_table(frame, [ERSM_NAME], 0.5, power=0.9).loc[0, "seeds_needed"] >= table.loc[0, "seeds_needed"]


def test_power_table_guards_a_zero_sd():
    table = accuracy.power_table(accuracy_frame([0.3] * 4), [ERSM_NAME], 1.0)
    row = table.iloc[0]
    assert row["sd"] == 0.0 and row["seeds_needed"] == 2 and row["power"] == 1.0 and not row["underpowered"]
    assert "sd = 0" in row["note"]


def test_power_table_past_the_seed_limit_and_as_json():
    frame = accuracy_frame([30.0, -40.0, 20.0, -10.0])
    row = accuracy.power_table(frame, [ERSM_NAME], 0.1).iloc[0]
    assert row["seeds_needed"] is None and row["underpowered"] and "more than 1000" in row["note"]
    claim = accuracy.accuracy_claim(frame, ERSM_NAME, 0.1, power=accuracy.POWER)
    assert claim.verdict == f"{INCONCLUSIVE} (underpowered: 4 seeds of more than 1000 needed)"
    records = accuracy.power_table(frame, [ERSM_NAME], 0.1).to_dict("records")
    json.dumps(json_safe(records), allow_nan=False)             # what run.save writes


def test_claim_families_add_the_power_analysis_seeds_to_the_compared_families_only():
    base = base_of(parameters("01_training", "ci"))
    families = accuracy.claim_families(base, [0, 1], [0, 1, 5])
    assert list(families) == list(common.ALL_MODELS)
    for name, runs in families.items():
        assert [c.seed for c in runs] == ([0, 1, 5] if name in (common.DENSE, *common.ERSM_MODELS) else [0, 1]), name
    # the seeds of SEEDS are the same models as common.family's, which the other notebooks read
    plain = common.family(base, [0, 1], names=common.ALL_MODELS)
    assert all(families[name][:2] == plain[name] for name in plain)
    assert accuracy.claim_families(base, [0, 1], [5, 1, 0])[common.DENSE] == families[common.DENSE]   # SEEDS first


def test_seed_counts_name_the_added_seeds_only_when_there_are_some():
    # ci trains every family at SEEDS: its header line must read as it did before ACCURACY_SEEDS existed
    assert accuracy.seed_counts([0, 1], [0, 1]) == "2 seeds"
    assert accuracy.seed_counts([0, 1], [1, 0]) == "2 seeds"
    assert accuracy.seed_counts([0, 1, 2, 3, 4], list(range(10))) == "5 seeds (10 for dense and the ERSM variants)"


@pytest.mark.parametrize("seeds, accuracy_seeds, message", [
    ([0, 1], [0, 2], r"accuracy_seeds=\[0, 2\] lacks seed\(s\) \[1\] of seeds=\[0, 1\]"),
    ([0, 1], [0, 1, 1], r"accuracy_seeds=\[0, 1, 1\] repeats a seed"),
    ([0, 1], [0, 1, 2.0], r"accuracy_seeds=\[0, 1, 2.0\] must be a non-empty list of integer seeds"),
    ([0, 1], [], r"accuracy_seeds=\[\] must be a non-empty list"),
    ([0, True], [0, 1], r"seeds=\[0, True\] must be a non-empty list of integer seeds"),
])
def test_claim_families_refuse_bad_seeds_by_name(seeds, accuracy_seeds, message):
    base = base_of(parameters("01_training", "ci"))
    with pytest.raises(ValueError, match=message):
        accuracy.claim_families(base, seeds, accuracy_seeds)


def test_full_trains_the_seeds_its_power_analysis_asked_for():
    # 10 = the largest n of the 5-seed full run's power table (docs/rules.md, 2026-12-01); every SEEDS seed kept
    full = parameters("01_training", "full")
    assert full["ACCURACY_SEEDS"] == list(range(10)) and set(full["SEEDS"]) <= set(full["ACCURACY_SEEDS"])
    assert all(parameters("01_training", p)["ACCURACY_SEEDS"] == parameters("01_training", p)["SEEDS"]
               for p in ("ci", "cifar10", "pets"))


def test_accuracy_claim_says_underpowered_beside_its_verdict():
    noisy = accuracy.accuracy_claim(accuracy_frame([0.5, -0.7, 0.2, -0.4]), ERSM_NAME, 0.5, power=accuracy.POWER)
    n = seeds_for_noninferiority(np.std([0.5, -0.7, 0.2, -0.4], ddof=1), 0.5)
    assert noisy.verdict == f"{INCONCLUSIVE} (underpowered: 4 seeds of {n} needed)"
    assert noisy.verdict.split(" (")[0] == INCONCLUSIVE and "power analysis" in noisy.rule
    tight = accuracy.accuracy_claim(accuracy_frame([0.01, -0.01, 0.02, 0.0]), ERSM_NAME, 0.5, power=accuracy.POWER)
    assert tight.verdict == SUPPORTED
    assert accuracy.accuracy_claim(accuracy_frame([0.5, -0.7, 0.2, -0.4]), ERSM_NAME, 0.5).verdict == INCONCLUSIVE


# ============================================================================= 02 the measures

def test_kept_mass_by_hand():
    mask = torch.tensor([[0.1, 0.2], [0.2, 0.1]]).expand(4, 1, 2, 2).clone()
    mask[1] = 0.3                                    # flat: keeps everything
    mask[2] = 0.0                                    # hard-concrete closed every gate: keeps nothing
    mask[3] = torch.tensor([[0.0, 0.0], [0.0, 0.4]])  # one token open
    np.testing.assert_allclose(sparsity.kept_mass(mask), [0.75, 1.0, 0.0, 0.25])
    np.testing.assert_allclose(sparsity.kept_mass(mask[:, 0]), [0.75, 1.0, 0.0, 0.25])  # [N, h, w] too
    np.testing.assert_allclose(sparsity.zero_share(mask), [0.0, 0.0, 1.0, 0.75])
    assert torch.isfinite(sparsity.relative_mask(mask)).all() and sparsity.relative_mask(mask)[2].sum() == 0
    np.testing.assert_allclose(sparsity.relative_magnitude_kept_mass(torch.tensor([[[1.0, -3.0], [2.0, 2.0]]])), [2 / 3])


def grid(values, n: int = 2) -> torch.Tensor:
    """``n`` images with the same ``[h, w]`` mask."""
    return torch.as_tensor(values, dtype=torch.float64).expand(n, 1, *np.shape(values)).clone()


@pytest.mark.parametrize("side", [0.99, 1.01])
def test_degeneracy_uniform_at_the_v2_cut_off(side):
    tokens = 400
    pattern = np.where(np.arange(tokens) % 2 == 0, 1.0, -1.0)
    eps = side * sparsity.SPATIAL_CV_BELOW / math.sqrt(tokens / (tokens - 1))  # CV with ddof=1
    result = sparsity.degeneracy(grid((0.3 * (1 + eps * pattern)).reshape(20, 20)))
    assert result["spatial_cv"] == pytest.approx(side * 0.01)
    assert result["uniform"] == (side < 1) == result["degenerate"]
    assert not result["collapsed_at_half"] and not result["collapsed_to_zero"]


@pytest.mark.parametrize("side", [0.99, 1.01])
def test_degeneracy_collapsed_at_half_at_the_v2_cut_off(side):
    values = np.full(400, 0.5)
    values[:2] = 0.5 - 200 * side * sparsity.GAP_TO_HALF_BELOW  # two tokens carry the whole gap
    result = sparsity.degeneracy(grid(values.reshape(20, 20)))
    assert result["mean_gap_to_half"] == pytest.approx(side * 0.002)
    assert result["collapsed_at_half"] == (side < 1) == result["degenerate"]
    assert result["spatial_cv"] > 0.05 and not result["uniform"] and not result["collapsed_to_zero"]


@pytest.mark.parametrize("side", [0.99, 1.01])
def test_degeneracy_collapsed_to_zero_at_the_v2_cut_off(side):
    base = np.linspace(0.0, 1.0, 400)
    values = base * side * sparsity.P99_BELOW / np.quantile(base, 0.99)
    result = sparsity.degeneracy(grid(values.reshape(20, 20)))
    assert result["p99_mask"] == pytest.approx(side * 0.002)
    assert result["collapsed_to_zero"] == (side < 1) == result["degenerate"]
    assert not result["uniform"] and not result["collapsed_at_half"]


def test_spatial_cv_of_an_all_zero_image_is_zero():
    mask = torch.zeros(2, 1, 3, 3)
    mask[1, 0, 0, 0] = 1.0
    np.testing.assert_allclose(sparsity.spatial_cv(mask), [0.0, 3.0])  # one 1 among nine: std = 1/3, mean = 1/9


# ============================================================================= 02 skipped multiply-adds

def brute_force_skipped(conv: nn.Conv2d, zero: torch.Tensor) -> list[int]:
    """Loop over every output position and kernel tap; count reads of zero tokens (inside the grid)."""
    zero = zero.reshape(zero.shape[0], *zero.shape[-2:])
    height, width = zero.shape[-2:]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    per_read = conv.in_channels // conv.groups * conv.out_channels
    counts = []
    for image in zero:
        total = 0
        for oy in range(out_h):
            for ox in range(out_w):
                for a in range(kh):
                    for b in range(kw):
                        y, x = oy * sh - ph + a * dh, ox * sw - pw + b * dw
                        if 0 <= y < height and 0 <= x < width and image[y, x]:
                            total += per_read
        counts.append(total)
    return counts


def zeros_at(*tokens, size: int = 4) -> torch.Tensor:
    zero = torch.zeros(len(tokens), 1, size, size, dtype=torch.bool)
    for i, (y, x) in enumerate(tokens):
        zero[i, 0, y, x] = True
    return zero


@pytest.mark.parametrize("conv, tokens, expected", [
    # 3x3, stride 1, padding 1, 2 -> 3 channels: a read costs 6; a corner is read 4 times, an inner token 9 times
    (nn.Conv2d(2, 3, 3, padding=1), [(0, 0), (1, 1), (0, 1)], [24, 54, 36]),
    # stride 2 on 4x4: outputs 2x2; (1, 1) is read by all four, (0, 0), (3, 3), (0, 2) by one each
    (nn.Conv2d(2, 3, 3, stride=2, padding=1), [(1, 1), (0, 0), (3, 3), (0, 2)], [24, 6, 6, 6]),
    # groups: 4 -> 6 channels in 2 groups, a read costs 4 / 2 * 6 = 12; 1x1 stride 1 reads each token once
    (nn.Conv2d(4, 6, 1, groups=2), [(2, 3)], [12]),
])
def test_conv_skipped_macs_by_hand(conv, tokens, expected):
    zero = zeros_at(*tokens)
    assert sparsity.conv_skipped_macs(conv, zero).tolist() == expected == brute_force_skipped(conv, zero)


def test_conv_skipped_macs_against_brute_force_with_dilation():
    conv = nn.Conv2d(3, 5, (3, 2), stride=(2, 1), padding=(2, 1), dilation=(2, 1))
    zero = torch.rand(3, 1, 7, 6, generator=torch.Generator().manual_seed(0)) < 0.4
    assert sparsity.conv_skipped_macs(conv, zero).tolist() == brute_force_skipped(conv, zero)
    # output (7 + 4 - 4 - 1) // 2 + 1 = 4 by (6 + 2 - 1 - 1) + 1 = 7 positions, 5 x 3 channels, 3 x 2 taps
    assert sparsity.conv_macs(conv, conv(torch.zeros(1, 3, 7, 6)).shape) == 4 * 7 * 5 * 3 * 3 * 2


def hardconcrete_cnn(seed: int, closed: float = 0.5) -> nn.Module:
    """An untrained width-4 SmallCNN with a hard-concrete gate set to close about ``closed`` of the tokens."""
    torch.manual_seed(seed)
    model = ersm.build_model("small_cnn", energy_mask=dict(proj_dim=4, variant="hardconcrete"), width=4).eval()
    layer = model.layer2[1]
    with torch.no_grad():
        layer.score.weight.mul_(20.0)
        unary = predict(model, IMAGES).unary
        # evaluation gate z = 0 exactly where log_alpha = c - E_un <= -ln 11
        layer.mask_offset.fill_(torch.quantile(unary.flatten(), closed).item() - math.log(11))
    return model


IMAGES = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(0))


def test_skipped_macs_on_a_smallcnn_with_a_hard_concrete_gate():
    model = hardconcrete_cnn(0)
    mask = predict(model, IMAGES).mask
    share = (mask == 0).double().mean().item()
    assert 0.2 < share < 0.8                                    # exact zeros, and not all of them
    saved = sparsity.skipped_macs(model, IMAGES)
    conv = model.layer3[0]
    assert saved.layer == "layer2.1" and saved.stage == "layer3" and saved.convs == ("layer3.0",)
    assert saved.skipped.tolist() == brute_force_skipped(conv, mask == 0)
    # layer3: one 3x3 stride-2 conv, 8 -> 16 channels, 8x8 -> 4x4 tokens
    assert saved.conv_macs == saved.stage_macs == 4 * 4 * 16 * 8 * 9
    assert (saved.skipped > 0).all() and (saved.skipped < saved.conv_macs).all()
    # the mask passed in is the mask computed
    assert sparsity.skipped_macs(model, IMAGES, mask).skipped.tolist() == saved.skipped.tolist()


def test_skipped_macs_on_a_torchvision_resnet():
    model = torchvision.models.resnet18(num_classes=10)
    ersm.insert_energy_mask(model, after="layer3", proj_dim=4, variant="hardconcrete")
    with torch.no_grad():
        model.layer3[1].mask_offset.fill_(-100.0)               # every gate closed
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    saved = sparsity.skipped_macs(model, images)
    assert saved.stage == "layer4" and saved.convs == ("layer4.0.conv1", "layer4.0.downsample.0")
    # layer3's grid is 2x2; conv1 (3x3, stride 2, padding 1) reads all 4 tokens once, the 1x1 downsample reads 1
    assert saved.skipped.tolist() == [5 * 256 * 512] * 2
    assert saved.conv_macs == 256 * 512 * 9 + 256 * 512
    assert saved.stage_macs == 256 * 512 * 9 + 3 * 512 * 512 * 9 + 256 * 512  # layer4 at 1x1: five convs


def test_skipped_macs_refuses_what_it_cannot_count():
    with pytest.raises(ValueError, match=r"model holds 0 EnergyMask layers"):
        sparsity.skipped_macs(ersm.build_model("small_cnn", width=4), IMAGES)
    pooled = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), ersm.EnergyMask(4, proj_dim=2), nn.MaxPool2d(2),
                           nn.Conv2d(4, 4, 3))
    with pytest.raises(ValueError, match=r"no nn.Conv2d reads the output of the EnergyMask at '1' directly"):
        sparsity.skipped_macs(pooled, IMAGES)
    reflect = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), ersm.EnergyMask(4, proj_dim=2),
                            nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match=r"padding_mode='reflect'"):
        sparsity.skipped_macs(reflect, IMAGES)
    with pytest.raises(ValueError, match=r"mask has the grid \(4, 4\), but 'layer3.0' reads a map of \(8, 8\)"):
        sparsity.skipped_macs(hardconcrete_cnn(0), IMAGES, torch.zeros(6, 1, 4, 4))


# ============================================================================= 02 the frames

def test_mask_frame_on_real_models():
    models = {"hc": [hardconcrete_cnn(1), hardconcrete_cnn(0)]}
    torch.manual_seed(2)
    models["paper"] = [ersm.build_model("small_cnn", energy_mask=dict(proj_dim=4), width=4).eval() for _ in range(2)]
    configs = {"hc": [SimpleNamespace(seed=1), SimpleNamespace(seed=0)], "paper": [SimpleNamespace(seed=0), SimpleNamespace(seed=1)]}
    result = sparsity.mask_frame(models, configs, IMAGES)
    frame, masks, per_image = result                           # unpacks as a triple
    assert set(sparsity.FRAME_COLUMNS) <= set(frame.columns) and len(frame) == 4
    for name in models:
        assert per_image[name].shape == (2, len(IMAGES)) and result.seeds[name] == (0, 1)
        for row, seed in enumerate((0, 1)):                    # rows in seed order, whatever the configs' order
            np.testing.assert_allclose(per_image[name][row], 1 - sparsity.kept_mass(masks[name, seed]))
    hc = frame[frame.model == "hc"].set_index("seed")
    model = models["hc"][1]                                    # seed 0
    mask = predict(model, IMAGES).mask
    assert hc.loc[0, "zero_share"] == pytest.approx((mask == 0).double().mean().item()) and hc.loc[0, "zero_share"] > 0.2
    assert hc.loc[0, "skipped_macs"] == pytest.approx(np.mean(brute_force_skipped(model.layer3[0], mask == 0)))
    assert hc.loc[0, "skipped_share"] == pytest.approx(hc.loc[0, "skipped_macs"] / hc.loc[0, "stage_macs"])
    k = sparsity.kept_mass(mask)
    assert hc.loc[0, "kept_mass_cv"] == pytest.approx(coefficient_of_variation(k))
    assert hc.loc[0, "mean_sparsity"] == pytest.approx(1 - k.mean())
    paper = frame[frame.model == "paper"]                      # sigmoid(-E_un): never exactly 0
    assert (paper["zero_share"] == 0).all() and (paper["skipped_macs"] == 0).all()
    assert (paper["p99_mask"] <= 0.5).all() and not paper["collapsed_to_zero"].any()


def test_magnitude_frame_reads_the_dense_stage_output():
    torch.manual_seed(3)
    models = [ersm.build_model("small_cnn", width=4).eval() for _ in range(2)]
    frame = sparsity.magnitude_frame(models, [SimpleNamespace(seed=0), SimpleNamespace(seed=1)], IMAGES, stage="layer2")
    for model, row in zip(models, frame.itertuples()):
        with torch.no_grad():
            norm = model.layer2(model.layer1(model.stem(IMAGES))).norm(dim=1)
        k = (norm.flatten(1).mean(1) / norm.flatten(1).amax(1)).double().numpy()
        assert row.model == MAGNITUDE and row.mean_kept_mass == pytest.approx(k.mean(), rel=1e-5)
        assert row.kept_mass_cv == pytest.approx(coefficient_of_variation(k), rel=1e-4)


# ============================================================================= 02 emergence

def arms(offsets_a, offsets_b, n: int = 150, seed: int = 0):
    """Per-image sparsity ``[S, N]`` for two arms: a shared image effect plus a per-seed offset per arm."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(0.2, 0.6, size=n)
    a = image + np.asarray(offsets_a)[:, None] + rng.normal(0, 0.01, size=(len(offsets_a), n))
    b = image + np.asarray(offsets_b)[:, None] + rng.normal(0, 0.01, size=(len(offsets_b), n))
    return {ERSM_NAME: a, CONTROL: b}


def degeneracy_frame(treatment_flags=(False, False, False), control_flags=(False, False, False), per_image=None):
    rows = []
    for model, flags in ((ERSM_NAME, treatment_flags), (CONTROL, control_flags)):
        for seed, flag in enumerate(flags):
            value = per_image[model][seed].mean() if per_image is not None else 0.5
            rows.append({"model": model, "seed": seed, "mean_sparsity": value, "degenerate": flag})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("offsets_a, offsets_b, expected", [
    ([0.20, 0.22, 0.18], [0.0, 0.01, -0.01], SUPPORTED),     # sparser than beta = 0 in every seed
    ([0.10, -0.10, 0.05], [0.0, 0.0, 0.0], INCONCLUSIVE),    # no effect: seeds disagree
    ([0.0, 0.01, -0.01], [0.20, 0.22, 0.18], NOT_SUPPORTED),  # reversed
])
def test_emergence_claim(offsets_a, offsets_b, expected):
    per_image = arms(offsets_a, offsets_b)
    a, b = per_image[ERSM_NAME], per_image[CONTROL]
    claim = sparsity.emergence_claim(per_image, ERSM_NAME, CONTROL, N_BOOT, frame=degeneracy_frame(per_image=per_image))
    assert claim.verdict == expected
    # orientation: treatment - control; the interval is the rules-v2 hull on the [S, N] arrays
    assert claim.difference == pytest.approx(a.mean() - b.mean())
    assert (claim.difference, claim.lo, claim.hi) == paired_rule_v2_interval(a, b, n_boot=N_BOOT, seed=0)
    assert claim.ersm == pytest.approx(a.mean()) and claim.baseline == pytest.approx(b.mean())
    assert claim.baseline_name == CONTROL and "v2" in claim.rule and "no degenerate treatment seed" in claim.rule
    swapped = sparsity.emergence_claim(per_image, CONTROL, ERSM_NAME, N_BOOT)
    assert swapped.difference == pytest.approx(-claim.difference) and "not checked" in swapped.rule


def test_emergence_claim_pairs_seeds_by_row():
    """Seed offsets shared by both arms cancel in the pairing; shuffling one arm's rows breaks it."""
    per_image = arms([0.3, 0.0, -0.3], [0.28, -0.02, -0.32])
    assert sparsity.emergence_claim(per_image, ERSM_NAME, CONTROL, N_BOOT).verdict == SUPPORTED
    shuffled = {ERSM_NAME: per_image[ERSM_NAME][::-1], CONTROL: per_image[CONTROL]}
    assert sparsity.emergence_claim(shuffled, ERSM_NAME, CONTROL, N_BOOT).verdict == INCONCLUSIVE


def test_emergence_claim_veto_for_a_degenerate_treatment_seed_only():
    per_image = arms([0.20, 0.22, 0.18], [0.0, 0.01, -0.01])
    vetoed = sparsity.emergence_claim(per_image, ERSM_NAME, CONTROL, N_BOOT,
                                      frame=degeneracy_frame((False, True, False), per_image=per_image))
    assert vetoed.verdict == NOT_SUPPORTED and "degenerate in seed(s) [1]" in vetoed.rule
    control_only = sparsity.emergence_claim(per_image, ERSM_NAME, CONTROL, N_BOOT,
                                            frame=degeneracy_frame(control_flags=(True, True, True), per_image=per_image))
    assert control_only.verdict == SUPPORTED


# ============================================================================= 02 adaptivity

def cv_frames(treatment, control, dense, degenerate=(False, False, False)):
    frame = seed_frame("kept_mass_cv", {ERSM_NAME: treatment, CONTROL: control})
    frame["degenerate"] = list(degenerate) + [False] * len(control)
    return frame, seed_frame("kept_mass_cv", {MAGNITUDE: dense})


@pytest.mark.parametrize("treatment, control, dense, expected, overall", [
    ([0.30, 0.32, 0.31], [0.10, 0.12, 0.11], [0.05, 0.06, 0.04], [SUPPORTED, SUPPORTED], SUPPORTED),
    ([0.30, 0.32, 0.31], [0.10, 0.12, 0.11], [0.20, 0.50, 0.30], [SUPPORTED, INCONCLUSIVE], INCONCLUSIVE),
    ([0.30, 0.32, 0.31], [0.10, 0.12, 0.11], [0.60, 0.62, 0.61], [SUPPORTED, NOT_SUPPORTED], NOT_SUPPORTED),
    ([0.10, 0.12, 0.11], [0.30, 0.32, 0.31], [0.05, 0.06, 0.04], [NOT_SUPPORTED, SUPPORTED], NOT_SUPPORTED),
    ([0.30, 0.10, 0.20], [0.20, 0.20, 0.20], [0.20, 0.20, 0.21], [INCONCLUSIVE, INCONCLUSIVE], INCONCLUSIVE),
])
def test_adaptivity_claims(treatment, control, dense, expected, overall):
    frame, magnitude = cv_frames(treatment, control, dense)
    claims, verdict = sparsity.adaptivity_claims(frame, ERSM_NAME, CONTROL, magnitude)
    assert [c.verdict for c in claims] == expected and verdict == overall
    for claim, baseline, name in zip(claims, (control, dense), (CONTROL, MAGNITUDE)):
        mean, lo, hi = t_interval(np.subtract(treatment, baseline))     # orientation: CV(treatment) - CV(baseline)
        assert claim.baseline_name == name and claim.baseline == pytest.approx(np.mean(baseline))
        assert claim.ersm == pytest.approx(np.mean(treatment))
        assert claim.difference == pytest.approx(mean) and claim.lo == pytest.approx(lo) and claim.hi == pytest.approx(hi)
        assert "v2" in claim.rule


def test_adaptivity_claims_name_degenerate_seeds_without_a_veto():
    frame, magnitude = cv_frames([0.30, 0.32, 0.31], [0.10, 0.12, 0.11], [0.05, 0.06, 0.04], degenerate=(True, False, False))
    claims, verdict = sparsity.adaptivity_claims(frame, ERSM_NAME, CONTROL, magnitude)
    assert verdict == SUPPORTED
    assert all("degenerate in seed(s) [0]" in c.rule and "degenerate seeds [0]" in c.claim for c in claims)


def test_adaptivity_claims_pair_the_dense_baseline_by_seed():
    frame, magnitude = cv_frames([0.30, 0.50, 0.70], [0.10, 0.30, 0.50], [0.25, 0.45, 0.65])
    claims, _ = sparsity.adaptivity_claims(frame, ERSM_NAME, CONTROL, magnitude.iloc[::-1])
    assert claims[1].difference == pytest.approx(0.05) and claims[1].lo == pytest.approx(0.05) and claims[1].verdict == SUPPORTED


@pytest.mark.parametrize("verdicts, expected", [
    ([SUPPORTED, SUPPORTED], SUPPORTED), ([SUPPORTED, INCONCLUSIVE], INCONCLUSIVE),
    ([INCONCLUSIVE, NOT_SUPPORTED], NOT_SUPPORTED), ([SUPPORTED, NOT_SUPPORTED], NOT_SUPPORTED)])
def test_overall_verdict(verdicts, expected):
    assert overall_verdict(verdicts) == expected


# ============================================================================= bad input

def good_accuracy() -> pd.DataFrame:
    return seed_frame("accuracy", {DENSE: DENSE_ACC, ERSM_NAME: DENSE_ACC})


def good_arms() -> dict:
    return arms([0.20, 0.22, 0.18], [0.0, 0.01, -0.01], n=20)


def good_cvs():
    return cv_frames([0.30, 0.32, 0.31], [0.10, 0.12, 0.11], [0.05, 0.06, 0.04])


def with_value(frame: pd.DataFrame, model: str, column: str, value) -> pd.DataFrame:
    frame = frame.copy()
    frame.loc[frame.model == model, column] = value
    return frame


def one_seed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame.seed == 0]


def emergence(per_image=None, **kwargs):
    args = dict(per_image=good_arms() if per_image is None else per_image, treatment=ERSM_NAME, control=CONTROL, n_boot=N_BOOT)
    return sparsity.emergence_claim(**(args | kwargs))


def adaptivity(frame=None, magnitude=None, **kwargs):
    good_frame, good_magnitude = good_cvs()
    args = dict(frame=good_frame if frame is None else frame, treatment=ERSM_NAME, control=CONTROL,
                magnitude=good_magnitude if magnitude is None else magnitude)
    return sparsity.adaptivity_claims(**(args | kwargs))


EMPTY = pd.DataFrame(columns=["model", "seed", "accuracy"])
ONE = {"m": [SimpleNamespace(seed=0)]}

BAD_INPUT = {
    # accuracy_claim and power_table
    "accuracy: empty frame": (lambda: accuracy.accuracy_claim(EMPTY, ERSM_NAME, 1.0), r"frame is empty"),
    "accuracy: not a frame": (lambda: accuracy.accuracy_claim({"model": []}, ERSM_NAME, 1.0), r"frame must be a pandas DataFrame"),
    "accuracy: missing column": (lambda: accuracy.accuracy_claim(good_accuracy().drop(columns="accuracy"), ERSM_NAME, 1.0),
                                 r"frame lacks the column\(s\) \['accuracy'\]"),
    "accuracy: missing treatment": (lambda: accuracy.accuracy_claim(good_accuracy(), "ERSM y", 1.0),
                                    r"treatment='ERSM y' is not a model in frame; models are \['ERSM x', 'dense'\]"),
    "accuracy: missing dense": (lambda: accuracy.accuracy_claim(good_accuracy().replace({DENSE: "other"}), ERSM_NAME, 1.0),
                                r"'dense' is not a model in frame"),
    "accuracy: treatment is dense": (lambda: accuracy.accuracy_claim(good_accuracy(), DENSE, 1.0), r"treatment='dense' and .* are the same"),
    "accuracy: one seed": (lambda: accuracy.accuracy_claim(one_seed(good_accuracy()), ERSM_NAME, 1.0),
                           r"frame has 1 seed\(s\) for treatment='ERSM x'; a 95% t-interval over seeds needs at least 2"),
    "accuracy: NaN-only": (lambda: accuracy.accuracy_claim(with_value(good_accuracy(), ERSM_NAME, "accuracy", np.nan), ERSM_NAME, 1.0),
                           r"frame\['accuracy'\] has NaN or inf for treatment='ERSM x' \(4 of 4 seeds\)"),
    "accuracy: unpaired seeds": (lambda: accuracy.accuracy_claim(good_accuracy().iloc[:-1], ERSM_NAME, 1.0),
                                 r"treatment='ERSM x' has rows for seeds \[0, 1, 2\] in frame, which holds seeds \[0, 1, 2, 3\]"),
    "accuracy: duplicate rows": (lambda: accuracy.accuracy_claim(pd.concat([good_accuracy()] * 2), ERSM_NAME, 1.0),
                                 r"frame has more than one row for \(model, seed\)"),
    "accuracy: negative margin": (lambda: accuracy.accuracy_claim(good_accuracy(), ERSM_NAME, -1.0), r"margin=-1.0 must lie in"),
    "accuracy: NaN margin": (lambda: accuracy.accuracy_claim(good_accuracy(), ERSM_NAME, float("nan")), r"margin=nan must be a finite number"),
    "accuracy: power with margin 0": (lambda: accuracy.accuracy_claim(good_accuracy(), ERSM_NAME, 0.0, power=0.8),
                                      r"margin=0.0 must be > 0 for a power analysis"),
    "power: power 1": (lambda: accuracy.power_table(good_accuracy(), [ERSM_NAME], 1.0, power=1.0), r"power=1.0 must lie strictly"),
    "power: treatments a string": (lambda: accuracy.power_table(good_accuracy(), ERSM_NAME, 1.0),
                                   r"treatments='ERSM x' must be a non-empty list"),
    "power: no treatments": (lambda: accuracy.power_table(good_accuracy(), [], 1.0), r"treatments=\[\] must be a non-empty list"),
    "power: missing treatment": (lambda: accuracy.power_table(good_accuracy(), [ERSM_NAME, "ERSM y"], 1.0),
                                 r"treatments\[1\]='ERSM y' is not a model in frame"),
    "power: missing baseline": (lambda: accuracy.power_table(good_accuracy(), [ERSM_NAME], 1.0, baseline="dense + Cutout"),
                                r"baseline='dense \+ Cutout' is not a model in frame"),
    "power: one seed": (lambda: accuracy.power_table(one_seed(good_accuracy()), [ERSM_NAME], 1.0), r"frame has 1 seed\(s\)"),
    # emergence_claim
    "emergence: not a dict": (lambda: emergence(per_image=[np.zeros((2, 2))]), r"per_image must be a non-empty dict"),
    "emergence: empty dict": (lambda: emergence(per_image={}), r"per_image must be a non-empty dict"),
    "emergence: missing control": (lambda: emergence(control="beta=0"),
                                   r"control='beta=0' is not a model in per_image; models are \['ERSM x', 'ERSM x, beta=0'\]"),
    "emergence: missing treatment": (lambda: emergence(treatment="nope"), r"treatment='nope' is not a model in per_image"),
    "emergence: same model": (lambda: emergence(control=ERSM_NAME), r"treatment='ERSM x' and control='ERSM x' are the same"),
    "emergence: one seed": (lambda: emergence(per_image={k: v[:1] for k, v in good_arms().items()}),
                            r"per_image\['ERSM x'\] has 1 seed\(s\); an interval over seeds needs at least 2"),
    "emergence: one image": (lambda: emergence(per_image={k: v[:, :1] for k, v in good_arms().items()}),
                             r"per_image\['ERSM x'\] has 1 test image\(s\)"),
    "emergence: 1-D": (lambda: emergence(per_image={k: v[0] for k, v in good_arms().items()}),
                       r"per_image\['ERSM x'\] must be a 2-D \[S, N\] array"),
    "emergence: NaN-only": (lambda: emergence(per_image=good_arms() | {CONTROL: np.full((3, 20), np.nan)}),
                            r"per_image\['ERSM x, beta=0'\] has 60 NaN or inf value\(s\) of 60"),
    "emergence: mismatched shapes": (lambda: emergence(per_image=good_arms() | {CONTROL: np.zeros((3, 19))}),
                                     r"per_image\['ERSM x, beta=0'\] has shape \(3, 19\), but per_image\['ERSM x'\] has \(3, 20\)"),
    "emergence: n_boot": (lambda: emergence(n_boot=0), r"n_boot=0 must be an integer >= 1"),
    "emergence: seed": (lambda: emergence(seed=1.5), r"seed=1.5 must be an integer >= 0"),
    "emergence: frame without flags": (lambda: emergence(frame=degeneracy_frame().drop(columns="degenerate")),
                                       r"frame lacks the column\(s\) \['degenerate'\]"),
    "emergence: frame of other seeds": (lambda: emergence(frame=degeneracy_frame((False, False), (False, False))),
                                        r"frame holds 2 seeds but per_image\['ERSM x'\] has 3 rows"),
    # adaptivity_claims
    "adaptivity: empty frame": (lambda: adaptivity(frame=good_cvs()[0].iloc[:0]), r"frame is empty"),
    "adaptivity: missing column": (lambda: adaptivity(frame=good_cvs()[0].drop(columns="degenerate")),
                                   r"frame lacks the column\(s\) \['degenerate'\]"),
    "adaptivity: missing control": (lambda: adaptivity(control="beta=0"), r"control='beta=0' is not a model in frame"),
    "adaptivity: missing treatment": (lambda: adaptivity(treatment="ERSM y"), r"treatment='ERSM y' is not a model in frame"),
    "adaptivity: one seed": (lambda: adaptivity(frame=one_seed(good_cvs()[0])),
                             r"frame has 1 seed\(s\) for treatment='ERSM x'; a 95% t-interval over seeds needs at least 2"),
    "adaptivity: NaN-only": (lambda: adaptivity(frame=with_value(good_cvs()[0], ERSM_NAME, "kept_mass_cv", np.nan)),
                             r"frame\['kept_mass_cv'\] has NaN or inf for treatment='ERSM x' \(3 of 3 seeds\)"),
    "adaptivity: two magnitude models": (lambda: adaptivity(magnitude=pd.concat([good_cvs()[1], good_cvs()[1].assign(model="x")])),
                                         r"magnitude holds the models \['dense \(relative magnitude\)', 'x'\]; it must hold one"),
    "adaptivity: magnitude missing a seed": (lambda: adaptivity(magnitude=good_cvs()[1].iloc[:2]),
                                             r"magnitude's model='dense \(relative magnitude\)' has rows for seeds \[0, 1\] in frame and "
                                             r"magnitude, which holds seeds \[0, 1, 2\]"),
    "adaptivity: NaN magnitude": (lambda: adaptivity(magnitude=good_cvs()[1].assign(kept_mass_cv=np.nan)),
                                  r"has NaN or inf for magnitude's model='dense \(relative magnitude\)'"),
    # the measures and the frames
    "kept mass: not a mask": (lambda: sparsity.kept_mass(torch.zeros(4, 2, 3, 3)), r"mask must be a tensor \[N, 1, h, w\]"),
    "mask frame: empty": (lambda: sparsity.mask_frame({}, {}, IMAGES), r"models must be a non-empty dict"),
    "mask frame: configs": (lambda: sparsity.mask_frame({"m": [nn.Identity()]}, {"n": []}, IMAGES),
                            r"configs must be a dict with the same names as models \(\['m'\]\), got \['n'\]"),
    "mask frame: unmatched": (lambda: sparsity.mask_frame({"m": [nn.Identity(), nn.Identity()]}, ONE, IMAGES),
                              r"models\['m'\] has 2 models and configs\['m'\] 1 configs"),
    "mask frame: one image": (lambda: sparsity.mask_frame({"m": [nn.Identity()]}, ONE, IMAGES[:1]),
                              r"images must be a tensor \[N, C, H, W\] with N >= 2, got images with shape \(1, 1, 32, 32\)"),
    "mask frame: dense model": (lambda: sparsity.mask_frame({"m": [ersm.build_model("small_cnn", width=4)]}, ONE, IMAGES),
                                r"models\['m'\] \(seed 0\) has no EnergyMask"),
    "magnitude frame: unmatched": (lambda: sparsity.magnitude_frame([nn.Identity()], [], IMAGES),
                                   r"models and configs must be non-empty lists of equal length"),
}


test_bad_input_is_refused_naming_the_argument = refusal_test(BAD_INPUT)


def test_the_good_inputs_behind_the_bad_ones_give_verdicts():
    """The bad-input cases above break one thing each in these inputs, which are accepted."""
    assert accuracy.accuracy_claim(good_accuracy(), ERSM_NAME, 1.0, power=0.8).verdict == SUPPORTED
    assert len(accuracy.power_table(good_accuracy(), [ERSM_NAME], 1.0)) == 1
    assert emergence(frame=degeneracy_frame(per_image=good_arms())).verdict == SUPPORTED
    assert adaptivity()[1] == SUPPORTED


def test_sweep_is_one_factor_from_the_paper_default_at_the_shared_recipe():
    from ersm.training.config import TrainConfig

    base = TrainConfig(n_train=96, n_val=64, n_test=64, epochs=2)
    recipe = {"lr": 0.004, "weight_decay": 0.002}
    sweep = sparsity.sweep_configs(base, {"lambda_unary": [0.2, 5.0], "beta": [5.0]}, seed=3, recipe=recipe)
    assert list(sweep) == ["paper default", "lambda_unary=0.2", "lambda_unary=5.0", "beta=5.0"]
    anchor = sweep["paper default"][0]
    assert (anchor.model, anchor.seed, anchor.lambda_unary, anchor.lambda_pair, anchor.beta) == ("paper", 3, 1.0, 1.0, 1.0)
    assert all(c.lr == 0.004 and c.weight_decay == 0.002 for runs in sweep.values() for c in runs)
    changed = {name: {k for k, v in runs[0].to_dict().items() if v != anchor.to_dict()[k]} for name, runs in sweep.items()}
    assert changed == {"paper default": set(), "lambda_unary=0.2": {"lambda_unary"}, "lambda_unary=5.0": {"lambda_unary"},
                       "beta=5.0": {"beta"}}
    assert sparsity.sweep_configs(base, {}, 0)["paper default"][0].lr == base.lr   # without a recipe: the base's
    with pytest.raises(ValueError, match="recipe=.*momentum"):
        sparsity.sweep_configs(base, {}, 0, recipe={"momentum": 0.9})
    with pytest.raises(ValueError, match="sweep="):
        sparsity.sweep_configs(base, {"beta": 5.0}, 0)


class _PixelLogits(nn.Module):
    """Logits = the first three pixels of the image's first row: a classifier whose answers we choose."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))   # predict reads the device from a parameter

    def forward(self, x):
        return x[:, 0, 0, :3] + 0 * self.unused


def test_correct_is_per_image_and_accuracy_is_its_mean():
    images = torch.zeros(4, 1, 2, 3)
    images[[0, 1, 2, 3], 0, 0, [2, 0, 1, 2]] = 1.0       # predicted classes 2, 0, 1, 2
    labels = torch.tensor([2, 1, 1, 0])
    right = ersm.training.inference.correct(_PixelLogits(), images, labels)
    assert right.dtype == torch.bool and right.tolist() == [True, False, True, False]
    assert ersm.training.inference.accuracy(_PixelLogits(), images, labels) == 0.5
