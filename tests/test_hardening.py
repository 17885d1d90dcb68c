"""harden(): hard top-k inference from a trained ERSM model (issue 31, part 1)."""
import math

import pytest
import torch
from torch import nn

from ersm import EnergyMask, build_model
from ersm.compute.hardening import (RANKINGS, HardEnergyMask, harden, kept_count, object_masks, token_coverage,
                            top_tokens)
from ersm.layer import energy_masks
from helpers.fixtures import randomise_batchnorm


def small_ersm(variant="paper", seed=0):
    torch.manual_seed(seed)
    model = build_model("small_cnn", in_channels=1, num_classes=5, width=8, energy_mask={"variant": variant})
    return model.eval()


def images(n=3, side=48, seed=1):
    return torch.rand(n, 1, side, side, generator=torch.Generator().manual_seed(seed))


def object_boxes(n=3, side=48):
    masks = torch.zeros(n, side, side)
    for i in range(n):
        masks[i, 4 * i:4 * i + 20, 8:30] = 1.0
    return masks


def single_layer(channels=6, seed=0, variant="paper"):
    torch.manual_seed(seed)
    return nn.Sequential(EnergyMask(channels, proj_dim=4, variant=variant)).eval()


@pytest.mark.parametrize("ranking", RANKINGS)
@pytest.mark.parametrize("variant", ["paper", "hardconcrete"])
def test_keep_one_equals_the_soft_model_exactly(ranking, variant):
    model = small_ersm(variant)
    x = images()
    with torch.no_grad():
        soft = model(x)
        hard = harden(model, keep=1.0, ranking=ranking)
        if ranking == "oracle":
            with object_masks(hard, object_boxes()):
                logits = hard(x)
        else:
            logits = hard(x)
    assert torch.equal(logits, soft)
    assert hard_layer(hard).kept.all()


def hard_layer(model):
    (_, layer), = energy_masks(model)
    assert isinstance(layer, HardEnergyMask)
    return layer


def test_original_model_is_untouched():
    model = small_ersm()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = images()
    with torch.no_grad():
        soft = model(x)
        hard = harden(model, keep=0.25)
        hard(x)
        again = model(x)
    assert type(model.layer2[1]) is EnergyMask
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(soft, again)
    assert not hard.training and not model.training
    assert all(p is not q for p, q in zip(model.parameters(), hard.parameters()))


@pytest.mark.parametrize("keep", [0.07, 0.25, 0.5, 0.9])
def test_keeps_exactly_k_tokens_with_their_soft_values_and_zeros_the_rest(keep):
    model = single_layer()
    x = torch.randn(4, 6, 10, 10)
    with torch.no_grad():
        soft = model(x)
        hard = harden(model, keep=keep)
        y = hard(x)
    kept = hard_layer(hard).kept
    assert kept.shape == (4, 1, 10, 10) and kept.dtype == torch.bool
    assert kept.flatten(1).sum(1).tolist() == [kept_count(keep, 100)] * 4
    assert torch.equal(y, torch.where(kept, soft, torch.zeros(())))
    assert (y.masked_select(~kept.expand_as(y)) == 0).all()


def test_kept_count_reads_the_decimal():
    assert kept_count(0.07, 100) == 7  # ceil(0.07 * 100) in binary floating point is 8
    assert kept_count(0.5, 784) == 392
    assert kept_count(0.25, 49) == 13
    assert kept_count(1e-9, 49) == 1
    assert kept_count(1, 49) == 49


def test_ties_are_kept_in_row_major_order():
    scores = torch.zeros(2, 1, 3, 4)
    scores[1, 0, 2, 3] = 1.0
    kept = top_tokens(scores, 3)
    assert kept[0].flatten().tolist() == [True] * 3 + [False] * 9
    assert kept[1].flatten().tolist() == [True, True] + [False] * 9 + [True]


def reference_scores(model, x, ranking):
    """Each ranking's scores computed from the soft model, independently of hardening.py."""
    layer = model[0]
    with torch.no_grad():
        soft = model(x)
    terms = layer.terms
    return {"mask": terms.mask, "energy": -terms.energy, "magnitude": x.norm(dim=1, keepdim=True),
            "masked_magnitude": soft.norm(dim=1, keepdim=True)}[ranking]


@pytest.mark.parametrize("ranking", ["mask", "energy", "magnitude", "masked_magnitude"])
def test_each_ranking_keeps_its_highest_scores(ranking):
    model = single_layer(seed=3)
    x = torch.randn(3, 6, 7, 9) * torch.rand(3, 1, 7, 9) * 3
    scores = reference_scores(model, x, ranking).flatten(1)
    hard = harden(model, keep=0.3, ranking=ranking)
    with torch.no_grad():
        hard(x)
    kept = hard_layer(hard).kept.flatten(1)
    k = kept_count(0.3, 63)
    expected = torch.zeros_like(kept).scatter_(1, scores.argsort(1, descending=True)[:, :k], True)
    assert torch.equal(kept, expected)
    # the rankings differ, so each test checks its own ranking
    assert (scores.masked_fill(~kept, math.inf).min(1).values >= scores.masked_fill(kept, -math.inf).max(1).values).all()


def test_random_ranking_is_seeded():
    model = single_layer()
    x = torch.randn(2, 6, 8, 8)

    def kept_of(seed, passes=2):
        hard = harden(model, keep=0.5, ranking="random", seed=seed)
        out = []
        with torch.no_grad():
            for _ in range(passes):
                hard(x)
                out.append(hard_layer(hard).kept.clone())
        return out

    first, again, other = kept_of(0), kept_of(0), kept_of(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])
    assert not torch.equal(first[0], first[1])  # the generator advances between passes


def test_oracle_keeps_the_object_tokens_and_needs_the_masks():
    model = single_layer()
    x = torch.randn(2, 6, 6, 6)
    masks = torch.zeros(2, 1, 24, 24)
    masks[0, :, 0:8, 0:8] = 1.0  # tokens (0..1, 0..1): 4 tokens of 36
    masks[1, :, 12:24, 16:24] = 1.0  # tokens (3..5, 4..5): 6 tokens
    hard = harden(model, keep=4 / 36, ranking="oracle")
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="object masks"):
            hard(x)
        with object_masks(hard, masks):
            hard(x)
        with pytest.raises(ValueError, match="2 masks"):
            with object_masks(hard, masks):
                hard(x[:1])
    kept = hard_layer(hard).kept[:, 0]
    assert kept[0, 0:2, 0:2].all() and kept[0].sum() == 4
    assert kept[1, 3:6, 4:6].sum() == 4 and kept[1].sum() == 4
    assert hard_layer(hard).object_mask is None  # removed when the block closed
    torch.testing.assert_close(token_coverage(masks[1], (6, 6))[0, 0, 3, 4], torch.tensor(1.0))


def test_oracle_context_refuses_bad_masks_and_models():
    model = single_layer()
    hard = harden(model, keep=0.5, ranking="oracle")
    with pytest.raises(ValueError, match="masks must be"):
        with object_masks(hard, torch.zeros(2, 2, 4, 4)):
            pass
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        with object_masks(hard, torch.full((2, 4, 4), 2.0)):
            pass
    with pytest.raises(ValueError, match="ranking='oracle'"):
        with object_masks(harden(model, keep=0.5), torch.zeros(2, 4, 4)):
            pass


@pytest.mark.parametrize("keep", [0, 0.0, -0.1, 1.0001, 2, float("nan"), float("inf"), True, "0.5", None])
def test_bad_keep_is_refused_naming_it(keep):
    with pytest.raises(ValueError, match=r"keep="):
        harden(small_ersm(), keep=keep)


def test_bad_ranking_and_seed_are_refused():
    with pytest.raises(ValueError, match=r"ranking='gradcam' must be one of"):
        harden(small_ersm(), keep=0.5, ranking="gradcam")
    with pytest.raises(ValueError, match=r"seed=0.5"):
        harden(small_ersm(), keep=0.5, ranking="random", seed=0.5)


def test_model_without_an_energy_mask_is_refused():
    torch.manual_seed(0)
    dense = build_model("small_cnn", width=8).eval()
    with pytest.raises(ValueError, match="no EnergyMask"):
        harden(dense, keep=0.5)
    with pytest.raises(ValueError, match="EnergyMask itself"):
        harden(EnergyMask(4).eval(), keep=0.5)
    with pytest.raises(ValueError, match="hardened already"):
        harden(harden(small_ersm(), keep=0.5), keep=0.5)


def test_training_mode_is_refused_with_the_reason_before_any_work(monkeypatch):
    import ersm.compute.hardening as hardening

    def no_copy(_):
        raise AssertionError("harden copied the model before refusing it")

    monkeypatch.setattr(hardening.copy, "deepcopy", no_copy)
    model = small_ersm().train()
    with pytest.raises(RuntimeError, match="training mode.*model.eval"):
        harden(model, keep=0.5)
    with pytest.raises(ValueError, match="keep="):  # arguments are checked first
        harden(model, keep=1.5)
    assert model.training


def test_a_hardened_model_refuses_to_run_in_training_mode():
    hard = harden(small_ersm(), keep=0.5).train()
    with pytest.raises(RuntimeError, match="inference only"):
        hard(images())


def test_soft_terms_still_reach_collectors():
    import ersm

    model = small_ersm()
    x = images()
    with torch.no_grad():
        model(x)
        soft_mask = model.layer2[1].terms.mask
        hard = harden(model, keep=0.5)
        with ersm.collect_terms(hard) as collected:
            hard(x)
    assert torch.equal(collected.concatenated().mask, soft_mask)


# ----------------------------------------------------------------------------- execution="sparse" / "reference" / "auto"

def ersm_backbone(name):
    torch.manual_seed(0)
    if name == "small_cnn":
        model, x = build_model("small_cnn", width=8, num_classes=5, energy_mask={}), images(3, 48)
    else:
        model = build_model("resnet50_imagenet", in_channels=3, num_classes=5, energy_mask={})
        x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    randomise_batchnorm(model)
    return model.eval(), x


def close(got, want):
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * max(1.0, float(want.abs().max())))


@pytest.mark.parametrize("name", ["small_cnn", "resnet50"])
@pytest.mark.parametrize("keep", [1.0, 0.5, 0.25])
def test_sparse_execution_matches_its_dense_reference(name, keep):
    model, x = ersm_backbone(name)
    with torch.no_grad():
        sparse = harden(model, keep, execution="sparse")(x)
        reference = harden(model, keep, execution="reference")(x)
        dense = harden(model, keep)(x)
        soft = model(x)
    close(sparse, reference)
    if keep == 1.0:  # every position active: the dense network, exactly for the reference
        assert torch.equal(reference, soft) and torch.equal(dense, soft)
    else:  # a different function from the dense network on the hardened features (module docstring)
        assert not torch.allclose(reference, dense, rtol=1e-3, atol=1e-3)


def test_sparse_execution_records_the_surviving_sparsity():
    model, x = ersm_backbone("resnet50")
    hard = harden(model, 0.25, execution="sparse")
    with torch.no_grad():
        hard(x)
    kept = hard.layer.kept
    assert kept.flatten(1).sum(1).tolist() == [kept_count(0.25, 64)] * 2
    shares = hard.last_active_shares
    assert len(shares) == 9 and all(0 < s <= 1 for s in shares)
    assert shares[:6] == [shares[0]] * 6 and shares[6:] == [shares[6]] * 3  # one mask per stage (stride 1 after the first unit)


class FakeClock:
    """perf_counter that advances only when the stages run: `sparse_cost` per sparse run, 1 per reference run."""

    def __init__(self, monkeypatch, sparse_cost):
        import ersm.compute.hardening as hardening
        from ersm.compute.sparse_exec import SparseStages

        self.now = 0.0
        run = SparseStages.run

        def timed_run(stages, x, kept, mode="sparse"):
            self.now += sparse_cost if mode == "sparse" else 1.0
            return run(stages, x, kept, mode)

        monkeypatch.setattr(SparseStages, "run", timed_run)
        monkeypatch.setattr(hardening.time, "perf_counter", lambda: self.now)


def test_auto_falls_back_to_the_reference_by_measurement_and_says_so(monkeypatch):
    model, x = ersm_backbone("small_cnn")
    FakeClock(monkeypatch, sparse_cost=1.5)
    with pytest.warns(UserWarning, match="falls back to the dense reference"):
        hard = harden(model, 0.5, execution="auto", probe=x, repeats=3)
    decision = hard.execution_decision
    assert (decision.chosen, hard.mode, decision.sparse_s, decision.reference_s) == ("reference", "reference", 1.5, 1.0)
    assert "ratio sparse/reference 1.50" in decision.describe()
    with torch.no_grad():
        close(hard(x), harden(model, 0.5, execution="sparse")(x))  # the same function either way


def test_auto_keeps_sparse_when_it_is_faster(monkeypatch, recwarn):
    model, x = ersm_backbone("small_cnn")
    FakeClock(monkeypatch, sparse_cost=0.5)
    hard = harden(model, 0.5, execution="auto", probe=x, repeats=2)
    assert hard.mode == "sparse" and hard.execution_decision.chosen == "sparse"
    assert not [w for w in recwarn if "falls back" in str(w.message)]


def test_execution_arguments_and_models_are_refused_before_any_work(monkeypatch):
    import collections

    import torchvision

    import ersm.compute.hardening as hardening
    from ersm.models import insert_energy_mask

    model, x = ersm_backbone("small_cnn")
    monkeypatch.setattr(hardening.copy, "deepcopy", lambda _: pytest.fail("copied before refusing"))
    with pytest.raises(ValueError, match="execution='fast'"):
        harden(model, 0.5, execution="fast")
    with pytest.raises(ValueError, match="probe=None"):
        harden(model, 0.5, execution="auto")
    with pytest.raises(ValueError, match="repeats=0"):
        harden(model, 0.5, execution="auto", probe=x, repeats=0)
    with pytest.raises(ValueError, match="stages=\\('head',\\)"):
        harden(model, 0.5, execution="sparse", stages=("head",))
    torch.manual_seed(0)
    torchvision_net = insert_energy_mask(torchvision.models.resnet18(num_classes=3), after="layer2").eval()
    with pytest.raises(ValueError, match="nn.Sequential model"):
        harden(torchvision_net, 0.5, execution="sparse")
    odd = nn.Sequential(collections.OrderedDict(
        layer2=nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), EnergyMask(4)),
        layer3=nn.Conv2d(4, 4, 3, padding=1), head=nn.Flatten())).eval()
    with pytest.raises(ValueError, match="not a unit"):
        harden(odd, 0.5, execution="sparse")
