"""One torchrun worker for tests/test_distributed.py: ``ersm.cli.main(["train", ...])`` with every
file-system write of this process logged (a ``sys.addaudithook``), and its final weights hashed.

Usage: ``torchrun --standalone --nproc_per_node N tests/helpers/ddp_worker.py LOG_DIR KEY=VALUE ...``;
``RANK_1_SETS=KEY=VALUE`` in the environment adds one more ``--set`` on rank 1 only.
"""
import hashlib
import json
import os
import sys

import ersm  # noqa: F401  (its kernel pins first)

log_dir, settings = sys.argv[1], sys.argv[2:]
rank = int(os.environ["RANK"])
home = os.path.realpath(os.environ["ERSM_HOME"])
writes: list[str] = []


def audit(event: str, args: tuple) -> None:
    """Record opens for writing, renames, mkdirs and removals under ERSM_HOME."""
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        mode, flags = args[1], args[2] or 0
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & (os.O_WRONLY | os.O_RDWR))
        paths = [args[0]] if writing else []
    elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir"):
        paths = [args[0]] + ([args[1]] if event == "os.rename" else [])
    else:
        return
    for path in paths:
        path = os.path.realpath(os.fsdecode(path))
        if path.startswith(home):
            writes.append(f"{event} {os.path.relpath(path, home)}")


sys.addaudithook(audit)

from ersm.cli import main  # noqa: E402
from ersm.training.config import from_dict, parse_assignment  # noqa: E402
from ersm.training.cache import get_model  # noqa: E402

extra = [os.environ["RANK_1_SETS"]] if rank == 1 and os.environ.get("RANK_1_SETS") else []
argv = ["train"] + [arg for item in settings + extra for arg in ("--set", item)]
code = main(argv)
report = {"rank": rank, "code": code, "writes": writes}
if code == 0:
    model = get_model(from_dict(dict(parse_assignment(item) for item in settings)))
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode() + value.detach().cpu().contiguous().numpy().tobytes())
    report["weights"] = digest.hexdigest()[:16]
sys.addaudithook(lambda *a: None)
with open(os.path.join(log_dir, f"rank{rank}.json"), "w") as handle:  # outside ERSM_HOME
    json.dump(report, handle)
sys.exit(code)
