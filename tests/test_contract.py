"""The layer's contract (issue 14, item 5): energy terms reachable through ``ersm.collect_terms``
across several forwards, DataParallel replicas, DistributedDataParallel and ``torch.compile``; the
non-finite check cheap off the CPU and out of compiled graphs."""
import copy
import math
import pickle
import threading
import time
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from torch import nn

import ersm
from ersm import EnergyMask, collect_terms, regularization_loss
from ersm.training.inference import predict
from ersm.layer import EnergyTerms

NAN_MESSAGE = "x contains non-finite values (NaN or inf) or overflows float32; the energy is undefined there"


def tiny_model(variant: str = "paper", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return ersm.build_model("small_cnn", width=8, energy_mask=dict(proj_dim=8, variant=variant))


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 48, 48, generator=torch.Generator().manual_seed(seed))


def cpu_replicas(model: nn.Module, n: int) -> list[nn.Module]:
    """What ``torch.nn.parallel.replicate`` makes, on the CPU (it refuses CPU devices): every module
    copied by DataParallel's own ``_replicate_for_data_parallel`` (a shallow ``__dict__`` copy),
    parameters replaced by differentiable aliases of the originals, as the broadcast does."""
    modules = list(model.modules())
    replicas = []
    for _ in range(n):
        copies = {id(module): module._replicate_for_data_parallel() for module in modules}
        for module in modules:
            replica = copies[id(module)]
            for name, child in module._modules.items():
                replica._modules[name] = None if child is None else copies[id(child)]
            for name, parameter in module._parameters.items():
                replica._parameters[name] = None if parameter is None else parameter.view_as(parameter)
        replicas.append(copies[id(model)])
    return replicas


def grads(model: nn.Module) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for p in model.parameters()]


def apply_in_threads(replicas: list[nn.Module], chunks: list[torch.Tensor]) -> list[torch.Tensor]:
    """``parallel_apply``'s scheme (one thread per replica) without its accelerator checks."""
    outputs: dict[int, torch.Tensor] = {}
    grad_enabled = torch.is_grad_enabled()

    def work(i: int) -> None:
        torch.set_grad_enabled(grad_enabled)
        outputs[i] = replicas[i](chunks[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(replicas))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [outputs[i] for i in range(len(replicas))]


# --- several forwards ---------------------------------------------------------------------------

def test_one_forward_matches_the_model_path_bit_for_bit():
    for variant in ersm.layer.VARIANTS:
        model = tiny_model(variant).train()
        x = images(3)
        torch.manual_seed(5)
        with collect_terms(model) as collected:
            model(x)
        layer = ersm.energy_masks(model)[0][1]
        assert len(collected) == 1 and collected.records[0].terms is layer.terms, variant
        assert collected.records[0].layer == "layer2.1" and collected.layers == ("layer2.1",)
        assert torch.equal(regularization_loss(collected), regularization_loss(model)), variant


def test_several_forwards_collected_in_order():
    model = tiny_model().eval()
    x = images(7)
    with collect_terms(model) as collected:
        model(x[:2])
        first = ersm.energy_masks(model)[0][1].terms
        model(x[2:5])
        model(x[5:])
    layer = ersm.energy_masks(model)[0][1]
    parts = collected.of()
    assert [part.energy.shape[0] for part in parts] == [2, 3, 2]
    assert parts[0] is first and parts[-1] is layer.terms  # layer.terms still the last forward's
    model(x)  # one pass over the whole batch (evaluation mode: no batch statistics)
    whole = layer.terms
    joined = collected.concatenated()
    for field in EnergyTerms._fields:
        torch.testing.assert_close(getattr(joined, field), getattr(whole, field), rtol=1e-6, atol=1e-7)
    # token-weighted: the mean over all 7 images, not the mean of the three micro-batch means
    torch.testing.assert_close(regularization_loss(collected), regularization_loss(model), rtol=1e-6, atol=0)
    per_forward = torch.stack([(p.gate_open * p.energy).mean() for p in parts]).mean()
    assert not torch.allclose(per_forward, regularization_loss(model), rtol=1e-6, atol=0)


def test_collector_lifecycle():
    model = tiny_model().eval()
    collected = collect_terms(model)
    with pytest.raises(RuntimeError, match="layer2.1"):
        regularization_loss(collected)  # nothing ran yet
    with collected:
        model(images(2))
    model(images(2))  # after the block: not collected
    assert len(collected) == 1 and not ersm.energy_masks(model)[0][1]._taps.entries
    with pytest.raises(RuntimeError, match="only once"):
        with collected:
            pass
    with collect_terms(model) as empty:
        pass
    with pytest.raises(RuntimeError, match="ran no forward pass"):
        regularization_loss(empty)
    dense = ersm.build_model("small_cnn", width=8)
    with collect_terms(dense) as none:
        dense(images(1))
    assert float(regularization_loss(none)) == 0.0 and none.layers == ()


def test_nested_collectors_both_collect():
    model = tiny_model().eval()
    with collect_terms(model) as outer:
        model(images(1))
        with collect_terms(model) as inner:
            model(images(2))
    assert len(outer) == 2 and len(inner) == 1
    assert inner.records[0].terms is outer.records[1].terms


def test_copies_are_not_collected_and_pickle():
    model = tiny_model().eval()
    with collect_terms(model) as collected:
        twin = copy.deepcopy(model)
        restored = pickle.loads(pickle.dumps(model))
        twin(images(1))
        restored(images(1))
        model(images(2))
    assert len(collected) == 1 and collected.records[0].terms.energy.shape[0] == 2
    assert not ersm.energy_masks(twin)[0][1]._taps.entries


# --- DataParallel replicas ----------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["threads", "sequential"])
def test_replicas_split_equals_one_pass(mode):
    # 5 images over 2 replicas split 3 + 2, as DataParallel's scatter does: the per-replica means
    # weigh 3 and 2 images alike, the token-weighted mean does not.
    model = tiny_model().eval()
    x = images(5)
    model(x)
    one_pass = regularization_loss(model)
    one_pass_terms = ersm.energy_masks(model)[0][1].terms
    one_pass.backward()
    reference_grads = grads(model)
    model.zero_grad()
    replicas = cpu_replicas(model, 2)
    with collect_terms(model) as collected:
        if mode == "threads":
            apply_in_threads(replicas, list(x.split(3)))
        else:
            for replica, chunk in zip(replicas, x.split(3)):
                replica(chunk)
    assert sorted(r.terms.energy.shape[0] for r in collected.records) == [2, 3]
    split = regularization_loss(collected)
    torch.testing.assert_close(split, one_pass, rtol=1e-6, atol=0)
    split.backward()  # through the replicas' parameter aliases into the model's parameters
    got_grads = grads(model)
    assert [g is None for g in got_grads] == [g is None for g in reference_grads]
    for got, want in zip(got_grads, reference_grads):
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    if mode == "sequential":  # one device: arrival order is batch order
        torch.testing.assert_close(collected.concatenated().mask, one_pass_terms.mask, rtol=1e-6, atol=1e-7)
    assert ersm.energy_masks(model)[0][1].terms is one_pass_terms  # the replicas never touch it


class CpuDataParallel(nn.Module):
    """DataParallel's forward on the CPU: scatter the batch, run fresh replicas, gather the outputs
    (replicas in turn: on one device, arrival order is what keeps the batch order)."""

    def __init__(self, module: nn.Module, replicas: int = 2) -> None:
        super().__init__()
        self.module, self.replicas = module, replicas

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chunks = x.chunk(self.replicas)
        return torch.cat([replica(chunk) for replica, chunk in zip(cpu_replicas(self.module, len(chunks)), chunks)])


def test_predict_reads_the_replicas_terms():
    model = tiny_model().eval()
    x = images(9)
    reference = predict(model, x, batch_size=4)
    model.layer2[1].terms = None  # only the replicas run from here on
    wrapped = CpuDataParallel(model)
    got = predict(wrapped, x, batch_size=4)  # batches 4, 4, 1 over 2 replicas
    assert model.layer2[1].terms is None
    for field in ("logits", "mask", "unary", "energy"):
        torch.testing.assert_close(getattr(got, field), getattr(reference, field), rtol=1e-6, atol=1e-7)


def test_records_ordered_by_pass_then_device():
    # DataParallel's replicas hand over from threads in any order; records read back in
    # (forward pass, device index, layer) order, i.e. the scattered batch's order.
    model = nn.Sequential(EnergyMask(2), EnergyMask(2))
    collected = collect_terms(model)

    def fake(device: str, tag: int):
        return SimpleNamespace(energy=SimpleNamespace(device=torch.device(device)), tag=tag)

    with collected:
        arrivals = [("1", "cuda:1", 0), ("0", "cuda:1", 1), ("0", "cuda:0", 2), ("1", "cuda:0", 3),
                    ("0", "cuda:1", 4), ("1", "cuda:1", 5), ("0", "cuda:0", 6), ("1", "cuda:0", 7)]
        for layer, device, tag in arrivals:
            collected._record(layer, fake(device, tag))
    order = [(r.layer, str(r.terms.energy.device), r.terms.tag) for r in collected.records]
    assert order == [("0", "cuda:0", 2), ("1", "cuda:0", 3), ("0", "cuda:1", 1), ("1", "cuda:1", 0),
                     ("0", "cuda:0", 6), ("1", "cuda:0", 7), ("0", "cuda:1", 4), ("1", "cuda:1", 5)]


def test_model_path_refuses_multi_device_data_parallel():
    model = tiny_model()
    wrapped = nn.DataParallel(model)
    wrapped.device_ids = [0, 1]  # without CUDA DataParallel keeps none; the check reads the list
    with pytest.raises(TypeError, match="collect_terms"):
        regularization_loss(wrapped)


# --- DistributedDataParallel ---------------------------------------------------------------------

def test_ddp_gloo_single_process_equals_unwrapped(tmp_path):
    model = tiny_model().train()
    twin = copy.deepcopy(model)
    x, y = images(4), torch.tensor([1, 2, 3, 4])
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        wrapped = nn.parallel.DistributedDataParallel(model)
        with collect_terms(wrapped) as collected:
            logits = wrapped(x)
        assert collected.layers == ("module.layer2.1",)
        objective = ersm.ersm_objective(logits, y, collected, beta=0.5)
        objective.total.backward()
    finally:
        dist.destroy_process_group()
    reference = ersm.ersm_objective(twin(x), y, twin, beta=0.5)
    reference.total.backward()
    assert torch.equal(objective.regularizer, reference.regularizer)
    torch.testing.assert_close(objective.total, reference.total, rtol=0, atol=0)
    for got, want in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-6, atol=1e-8)


# --- the non-finite check -----------------------------------------------------------------------

@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_cpu_non_finite_check_unchanged(bad):
    assert ersm.layer.CHECK_FINITE is None
    x = torch.randn(1, 4, 3, 3)
    x[0, 1, 2, 0] = bad
    with pytest.raises(ValueError) as error:
        EnergyMask(4)(x)
    assert str(error.value) == NAN_MESSAGE


def test_check_finite_policy(monkeypatch):
    cpu, meta = torch.empty(1), torch.empty(1, device="meta")  # meta stands in for CUDA's device type
    assert ersm.layer._check_finite(cpu) and not ersm.layer._check_finite(meta)
    monkeypatch.setattr(ersm.layer, "CHECK_FINITE", True)
    assert ersm.layer._check_finite(cpu) and ersm.layer._check_finite(meta)
    monkeypatch.setattr(ersm.layer, "CHECK_FINITE", False)
    assert not ersm.layer._check_finite(cpu) and not ersm.layer._check_finite(meta)
    y = EnergyMask(4)(torch.full((1, 4, 2, 2), math.nan))  # off: NaN passes through
    assert torch.isnan(y).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_no_host_sync_on_cuda(monkeypatch):
    model = tiny_model().cuda().train()
    x = images(4).cuda()
    model(x)  # warm-up: cuDNN and allocator set-up may synchronise once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with collect_terms(model) as collected:
            logits = model(x)
        loss = logits.float().logsumexp(1).mean() + regularization_loss(collected) + regularization_loss(model)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    monkeypatch.setattr(ersm.layer, "CHECK_FINITE", True)  # opt in: the CPU's check and message
    with pytest.raises(ValueError) as error:
        model(torch.full_like(x, math.nan))
    assert str(error.value) == NAN_MESSAGE


# --- torch.compile --------------------------------------------------------------------------------

def _compare_compiled(variant: str, backend: str, every_graph: bool) -> None:
    """Compiled and eager agree on outputs, regulariser and gradients. ``every_graph``: also the
    eval mode, a first call outside any collector and the NaN input (four graphs in all); without
    it, only the training graph, forward and backward, with a new collector each step."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = tiny_model(variant)
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    x = images(4)
    if every_graph:
        compiled(x)  # a first call outside any collector: later collectors must still be served
    for mode in ("train", "eval") if every_graph else ("train",):
        getattr(model, mode)()
        for step in range(2):  # a new collector each step
            with collect_terms(model) as eager:
                eager_out = model(x)
            eager_reg = regularization_loss(eager)
            (eager_out.sum() + eager_reg).backward()
            eager_grads = [p.grad.clone() for p in model.parameters()]
            model.zero_grad()
            with collect_terms(compiled) as collected:
                out = compiled(x)
            assert len(collected) == 1, (mode, step)
            reg = regularization_loss(collected)
            (out.sum() + reg).backward()
            torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(reg, eager_reg, rtol=1e-5, atol=1e-5)
            for got, want in zip((p.grad for p in model.parameters()), eager_grads):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            model.zero_grad()
            # the side channel is set by the compiled graph too
            assert ersm.energy_masks(model)[0][1].terms is collected.records[0].terms
    # no recompilation per collector: one graph per mode (train, eval) and tap-list length (0, 1)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= (4 if every_graph else 1)
    if every_graph:
        nan = compiled(torch.full_like(x, math.nan))  # the check is skipped in the graph
        assert torch.isnan(nan).all()


# Inductor generates and compiles C++ for every graph (about 10 s each on a 2-core CPU), so it
# compiles the training graph only; graph breaks, recompiles and the side channel are backend-
# independent (dynamo) and are checked on every graph with aot_eager.
@pytest.mark.parametrize("variant, backend, every_graph", [("paper", "inductor", False), ("meanfield", "aot_eager", True)],
                         ids=["paper-inductor-training-graph", "meanfield-aot_eager-every-graph"])
def test_torch_compile_fullgraph_matches_eager(variant, backend, every_graph):
    started = time.perf_counter()
    _compare_compiled(variant, backend, every_graph)
    print(f"torch.compile {variant} {backend}: {time.perf_counter() - started:.1f} s")
