"""``torchrun --nproc_per_node 2 ... ersm train``: one model on 2 CPU processes (gloo, DDP).

Each test starts ``torch.distributed.run`` on tests/helpers/ddp_worker.py, which calls
``ersm.cli.main(["train", ...])`` with every write under ``ERSM_HOME`` logged per rank.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ersm.training.checkpoint import load_checkpoint
from ersm.training.config import from_dict, parse_assignment
from helpers.fixtures import write_cifar

WORKER = Path(__file__).parent / "helpers" / "ddp_worker.py"
SETTINGS = ["dataset=cifar10", "model=paper", "width=8", "proj_dim=8", "n_train=32", "n_val=4", "n_test=6",
            "epochs=4", "batch_size=8", "device=cpu"]

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


def torchrun(tmp_path: Path, settings: list[str], **env) -> tuple[subprocess.CompletedProcess, dict[int, dict]]:
    home, data, logs = tmp_path / "home", tmp_path / "data", tmp_path / "logs"
    logs.mkdir()
    if not data.exists():
        write_cifar(data, per_batch=8)  # 40 training images, 6 test images
    environment = {**os.environ, "ERSM_HOME": str(home), "ERSM_DATA": str(data), "ERSM_THREADS": "1",
                   "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent), **env}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(WORKER), str(logs), *settings], env=environment, capture_output=True, text=True,
                          timeout=180)
    reports = {int(p.stem[4:]): json.loads(p.read_text()) for p in logs.glob("rank*.json")}
    return done, reports


def test_two_processes_train_one_model_that_learns_and_only_rank_0_writes(tmp_path):
    done, reports = torchrun(tmp_path, SETTINGS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(reports) == [0, 1] and all(r["code"] == 0 for r in reports.values())
    # one model: both processes end with the same weights
    assert reports[0]["weights"] == reports[1]["weights"]
    # only rank 0 wrote anything under ERSM_HOME; rank 1 not even a folder
    assert reports[1]["writes"] == []
    written = {line.split()[1] for line in reports[0]["writes"]}
    config = from_dict(dict(parse_assignment(item) for item in SETTINGS))
    run = os.path.join("runs", "cache", config.digest())
    assert {os.path.join(run, name) for name in ("config.json", "checkpoint.pt", "checkpoint.json", "metrics.jsonl")} <= written
    # it learns: the training loss falls over the 4 epochs
    state = load_checkpoint(tmp_path / "home" / run)
    losses = [record["loss"] for record in state["history"]]
    assert state["world_size"] == 2 and state["epoch"] == 4
    assert losses[-1] < 0.8 * losses[0], losses
    # the CLI printed its summary once (rank 0)
    assert done.stdout.count('"world_size": 2') == 1


def test_workers_that_disagree_on_the_config_fail_at_start_up_naming_the_field(tmp_path):
    done, reports = torchrun(tmp_path, SETTINGS, RANK_1_SETS="lr=0.01")
    assert done.returncode != 0
    assert sorted(reports) == [0, 1] and all(r["code"] == 2 for r in reports.values())
    assert "disagree on the config in field(s) ['lr']" in done.stderr
    assert "rank 0 0.003, rank 1 0.01" in done.stderr
    assert reports[0]["writes"] == [] and reports[1]["writes"] == []  # nothing was trained or written


def test_a_global_batch_is_dealt_out_like_distributed_sampler():
    from ersm.training.distributed import shard

    batch = torch.tensor([7, 3, 9, 1, 4])
    shares = [shard(batch, rank, 2) for rank in range(2)]
    assert [s.tolist() for s in shares] == [[7, 9, 4], [3, 1]]
    assert sorted(torch.cat(shares).tolist()) == sorted(batch.tolist())  # every item once
    assert [shard(torch.tensor([5]), rank, 3).tolist() for rank in range(3)] == [[5], [5], [5]]  # padded
    assert torch.equal(shard(batch, 0, 1), batch)
