"""Command line: ``ersm train``, ``reproduce``, ``warm``, ``models``, ``table``, ``bench``, ``fingerprint``,
``check-portable``, ``gpu-check``, ``bench-sparse`` (also ``python -m ersm``)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ersm.training.config import from_dict, parse_assignment


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ersm", description="Energy-Regularized Spatial Masking: train, reproduce, benchmark")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train one config (cached under runs/cache/<hash>/); "
                                              "under torchrun --nproc_per_node N: one model on N processes (DDP)")
    train.add_argument("--config", type=Path, help="a JSON file of TrainConfig fields")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one field (repeatable)")
    reproduce = commands.add_parser("reproduce", help="execute the notebooks through papermill for a profile")
    reproduce.add_argument("--profile", default="ci", help="ci, full, cifar10 or pets")
    reproduce.add_argument("--only", help="run only notebooks whose name starts with this, e.g. 03")
    reproduce.add_argument("--inplace", action="store_true", help="ci only: re-execute the committed notebooks in place")
    warm = commands.add_parser("warm", help="train every model a profile's notebooks need, ahead of `reproduce` "
                                            "(--jobs N: N at once, for a GPU)")
    warm.add_argument("--profile", default="ci", help="ci, full, cifar10, pets, or a confirmatory study: "
                                                             "confirm_small_cnn, confirm_resnet20 (rules v3)")
    warm.add_argument("--jobs", type=int, default=1, help="models trained at once (worker processes); 1 on a CPU")
    warm.add_argument("--status", action="store_true", help="train nothing: print each phase's models in the cache, "
                                                             "up to the first phase not complete")
    models = commands.add_parser("models", help="copy finished models between the cache and a folder (ersm/study/archive.py): "
                                                "export to keep them past this machine, import to use them")
    models.add_argument("direction", choices=("export", "import"))
    models.add_argument("folder", type=Path, help="the folder of exported models, e.g. models/full")
    models.add_argument("--exclude", type=Path, action="append", default=[],
                        help="export: leave out the models another folder already holds (e.g. --exclude models/full "
                             "when the cache also holds the exploratory models); repeatable")
    table = commands.add_parser("table", help="print the claims table of one profile's results (with each notebook's commit)")
    table.add_argument("--profile", default="ci", help="ci, full, cifar10 or pets")
    table.add_argument("--readme", action="store_true", help="also write the table and the findings between the README's claims and findings markers")
    bench = commands.add_parser("bench", help="print ERSM/dense overhead and data-loading ratios")
    bench.add_argument("--repeats", type=int, default=7, help="interleaved repeats per measurement")
    bench_sparse = commands.add_parser("bench-sparse", help="print sparse-vs-dense timing ratios of the post-mask stages "
                                                            "after a hard mask (ersm/compute/bench_sparse.py)")
    bench_sparse.add_argument("--repeats", type=int, default=5, help="interleaved repeats per measurement")
    bench_sparse.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: robust on a busy CPU)")
    fingerprint = commands.add_parser("fingerprint", help="hash of a short training run: same hash, same numerics as the "
                                                          "committed results (--trace/--compare: where two CPUs part, ersm/portability/trace.py)")
    fingerprint.add_argument("--trace", nargs="?", const="", metavar="PATH",
                             help="also write a hash of every step of the run to PATH (default <cpu>-<fingerprint>.json)")
    fingerprint.add_argument("--compare", metavar="TRACE", help="re-run here and print the first step that departs from "
                             "TRACE (a trace file or a committed trace's name); exit 0 all match, 1 differ, 2 not comparable")
    commands.add_parser("check-portable", help="exit 0 if this machine can reproduce the committed notebook outputs, "
                                               "else print why in one line and exit 3")
    gpu = commands.add_parser("gpu-check", help="the prepared check of the CUDA path on a lent GPU (ersm/portability/gpu_check.py): "
                                                "CUDA tests, full-size models, warm throughput, results/gpu/check.json; "
                                                "without a GPU one line and exit 0")
    gpu.add_argument("--dry-run", action="store_true", help="list every step with its expected time; run nothing")
    gpu.add_argument("--budget-seconds", default="480", metavar="SECONDS",
                     help="stop the check this many seconds after its start, with what it has (at most 480)")
    gpu.add_argument("--readme", action="store_true",
                     help="only write the README's GPU paragraph, rendered from results/gpu/check.json")
    return parser


def train_command(config) -> int:
    """``ersm train``: one process, or one of torchrun's workers (``ersm.training.distributed``); rank 0 prints."""
    import torch.distributed as dist

    from ersm.training import distributed
    from ersm.data import DatasetNotAvailable
    from ersm.models import WeightsNotAvailable
    from ersm.training.cache import get_model, training_history

    joined = distributed.init_from_env(config.torch_device())
    try:
        get_model(config)
        final = training_history(config)[-1]  # every worker: the calls hold collectives
        if distributed.is_main():
            print(json.dumps({"config": config.digest(), "final": final, "world_size": distributed.world()[1]}, indent=1))
    except (DatasetNotAvailable, WeightsNotAvailable) as error:  # offline: say what to download where
        print(f"ersm train: error: {error}", file=sys.stderr)
        return 2
    finally:
        if joined:
            dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            values = json.loads(args.config.read_text()) if args.config else {}
            if not isinstance(values, dict):
                raise ValueError(f"--config {args.config} must hold a JSON object of TrainConfig fields, not {type(values).__name__}")
            values.update(dict(parse_assignment(item) for item in args.set))
            config = from_dict(values)
            return train_command(config)
        elif args.command == "reproduce":
            from ersm.study.reproduce import reproduce

            print(f"claims table: {reproduce(args.profile, only=args.only, inplace=args.inplace)}")
        elif args.command == "warm":
            from ersm.study.plan import status, warm

            if args.status:
                rows = status(args.profile)
                for phase, done, total in rows:
                    print(f"[ersm warm] {args.profile}: {phase}: {done} of {total} models in the cache")
                complete = bool(rows) and rows[-1][1] == rows[-1][2]
                print(f"[ersm warm] {args.profile}: {'every phase complete' if complete else 'later phases follow'}")
            else:
                print(f"[ersm warm] {args.profile}: {warm(args.profile, jobs=args.jobs)} models trained")
        elif args.command == "models":
            from ersm.study.archive import export_models, import_models

            if args.direction == "export":
                outcome = export_models(args.folder, exclude=args.exclude)
            elif args.exclude:
                raise ValueError(f"--exclude {[str(p) for p in args.exclude]} applies to export only")
            else:
                outcome = import_models(args.folder)
            print(f"[ersm models] {args.direction} {args.folder}: {outcome.summary()}")
        elif args.command == "table":
            from ersm.study import findings
            from ersm.study.reproduce import claims_table, update_readme

            print(claims_table(args.profile), end="")
            print(findings.findings(args.profile), end="")
            if args.readme:
                update_readme(args.profile)
                print(f"claims table and findings written into {findings.update_readme(args.profile)}")
        elif args.command == "bench":
            from ersm.compute.bench import main as bench

            bench(["--repeats", str(args.repeats)])
        elif args.command == "bench-sparse":
            from ersm.compute.bench_sparse import main as bench_sparse

            bench_sparse(["--repeats", str(args.repeats), "--threads", str(args.threads)])
        elif args.command == "gpu-check":
            from ersm.portability import gpu_check

            budget = gpu_check.parse_budget(args.budget_seconds)  # refused before any work
            if args.dry_run and args.readme:
                raise ValueError("--dry-run and --readme are two different actions; give one")
            if args.readme:
                print(f"written into {gpu_check.update_readme()}")
            elif args.dry_run:
                print(gpu_check.dry_run_text(budget))
            else:
                return gpu_check.run_check(budget)
        elif args.command == "fingerprint":
            from ersm.portability.fingerprint import main as fingerprint

            return fingerprint(trace=args.trace, compare=args.compare)
        else:
            from ersm.portability.numerics import portability_problem

            problem = portability_problem()
            if problem is None:
                from ersm.portability.fingerprint import reference_problem

                problem = reference_problem()  # the pins are in force: does this CPU compute what the outputs need?
            if problem is not None:
                print(problem)
                return 3
    except (ValueError, FileNotFoundError) as error:
        print(f"ersm {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0
