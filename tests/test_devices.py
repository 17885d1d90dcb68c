"""Issue 33: the device is resolved in one place (ersm/training/devices.py)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from ersm.training import devices
from ersm.training.config import TrainConfig

PACKAGE = Path(devices.__file__).parent


def test_names_resolve_on_this_machine():
    assert devices.resolve("cpu") == torch.device("cpu")
    assert devices.resolve("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert TrainConfig(device="auto").torch_device() == devices.resolve("auto")
    assert devices.for_process("cpu") == torch.device("cpu")   # no process group: the resolved device


def test_fit_s_device_argument():
    model = torch.nn.Linear(2, 2)
    assert devices.parse(None, model) == torch.device("cpu") and devices.parse("cpu:0") == torch.device("cpu", 0)
    assert devices.parse(torch.device("cpu")) == torch.device("cpu")
    for bad, match in (("tpu", "is not a device"), (3, "must be None, a str"), (None, "no parameters")):
        with pytest.raises(ValueError, match=match):
            devices.parse(bad, torch.nn.ReLU() if bad is None else None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_cuda_without_a_gpu_is_refused_by_name():
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match="torch sees no CUDA device"):
            devices.parse(name)
    with pytest.raises(ValueError, match="device='gpu' must be one of"):
        devices.resolve("gpu")


def test_no_other_module_turns_a_device_name_into_a_device():
    """Only devices.py calls torch.device(...) on a name or reads torch.cuda.is_available() to choose one."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name in ("devices.py", "gpu_check.py", "bench.py", "bench_sparse.py", "distributed.py", "collection.py"):
            continue   # the benches and the GPU check time or report a device; distributed names torchrun's GPU and
                       # the gloo/NCCL buffers (devices.for_process asks it); collection.py's CPU is a parameterless model's
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "device"
                    and getattr(node.func.value, "id", None) == "torch" and node.args
                    and isinstance(node.args[0], ast.Constant) and node.args[0].value in ("cuda", "cpu", "auto")):
                offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, f"device names resolved outside ersm/training/devices.py: {offenders}"
