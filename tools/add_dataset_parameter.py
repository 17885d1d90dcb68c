"""Add the ``DATASET`` and ``BACKBONE`` parameters to the claim notebooks, in place, idempotently.

    python tools/add_dataset_parameter.py [notebooks_dir]   # default: notebooks/ beside this folder

Edits cell *sources* only (outputs, execution counts and metadata are kept, so executed
notebooks stay executed), with ``json``. Cells are found by their content (e.g. the line starting
``base = common.base_config(``), never by position; a second run changes nothing. Per notebook:

- the ``parameters`` cell gains ``DATASET = "cluttered_digits"`` and ``BACKBONE = "small_cnn"``
  after ``TUNING_TRIALS``, so ``ci`` (the defaults) behaves as before;
- the setup cell passes them to ``Run(...)`` and ``common.base_config(...)``;
- 02: "what the mask tracks" (digit metadata) is skipped off the cluttered digits;
- 03: object-targeted occlusion runs where the dataset has object masks
  (``occlusion.conditions_for``); background reliance only on the cluttered digits; the
  not-applicable entries go into the results JSON;
- 05: everything after the setup cell runs only where the dataset has object masks; otherwise
  the results JSON holds no claim and the not-applicable entry. The spurious-split part needs
  the cluttered digits.

A cell guarded by a condition becomes ``if COND:`` around its statements, and its trailing
expression (the displayed value) becomes ``(expr) if COND else None``, so its output on the
cluttered digits is unchanged.
"""
from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

GUARD = "# dataset guard: "


def lines_of(cell) -> list[str]:
    source = cell["source"]
    return ("".join(source) if isinstance(source, list) else source).split("\n")


def set_lines(cell, lines: list[str]) -> None:
    text = "\n".join(lines)
    cell["source"] = [line + "\n" for line in text.split("\n")[:-1]] + [text.split("\n")[-1]]
    if cell["source"][-1] == "":
        cell["source"].pop()


def find(cells, predicate, what: str, path: Path):
    found = [cell for cell in cells if cell["cell_type"] == "code" and predicate("\n".join(lines_of(cell)))]
    if len(found) != 1:
        raise SystemExit(f"{path.name}: expected one cell with {what}, found {len(found)}")
    return found[0]


def replace(cell, old: str, new: str, path: Path, done: str | None = None) -> None:
    """Replace ``old`` by ``new`` in the cell's text unless ``done`` (default ``new``) is already there."""
    text = "\n".join(lines_of(cell))
    if (done or new) in text:
        return
    if old not in text:
        raise SystemExit(f"{path.name}: {old!r} not found in the cell starting {lines_of(cell)[0]!r}")
    set_lines(cell, text.replace(old, new).split("\n"))


def guard(cell, condition: str, otherwise: list[str] | None = None) -> None:
    """Run the cell's statements under ``if condition:`` (its trailing expression as a conditional expression)."""
    lines = lines_of(cell)
    if any(line.startswith(GUARD) for line in lines):
        return
    head = []
    while lines and lines[0].startswith("#"):
        head.append(lines.pop(0))
    body = "\n".join(lines)
    tree = ast.parse(body)
    last = tree.body[-1] if tree.body else None
    tail = []
    if isinstance(last, ast.Expr):
        tail = [f"({ast.get_source_segment(body, last)}) if {condition} else None"]
        lines = lines[:last.lineno - 1]
    while lines and not lines[-1].strip():
        lines.pop()
    new = head + [f"{GUARD}{condition}"]
    if lines:
        new += [f"if {condition}:"] + [("    " + line) if line.strip() else "" for line in lines]
        if otherwise:
            new += ["else:"] + ["    " + line for line in otherwise]
    elif otherwise:
        new += [f"if not ({condition}):"] + ["    " + line for line in otherwise]
    set_lines(cell, new + tail)


def common_edits(cells, path: Path) -> None:
    params = find(cells, lambda t: "\nTUNING_TRIALS = " in t and t.startswith("PROFILE = "), "the parameters", path)
    lines = lines_of(params)
    if not any(line.startswith("DATASET = ") for line in lines):
        at = next(i for i, line in enumerate(lines) if line.startswith("TUNING_TRIALS = ")) + 1
        lines[at:at] = ['DATASET = "cluttered_digits"', 'BACKBONE = "small_cnn"']
        set_lines(params, lines)
    setup = find(cells, lambda t: any(line.startswith("base = common.base_config(") for line in t.split("\n")), "base = common.base_config(", path)
    replace(setup, 'PROFILE, dict(SEEDS=SEEDS,', 'PROFILE, dict(DATASET=DATASET, BACKBONE=BACKBONE, SEEDS=SEEDS,', path)
    replace(setup, "base = common.base_config(CANVAS, N_TRAIN, N_TEST, EPOCHS, ",
            "base = common.base_config(CANVAS, N_TRAIN, N_TEST, EPOCHS, dataset=DATASET, backbone=BACKBONE, ", path)
    return setup


def add_after(cell, anchor_prefix: str, new_lines: list[str], path: Path) -> None:
    lines = lines_of(cell)
    if new_lines[0] in lines:
        return
    at = next((i for i, line in enumerate(lines) if line.startswith(anchor_prefix)), None)
    if at is None:
        raise SystemExit(f"{path.name}: no line starting {anchor_prefix!r}")
    lines[at + 1:at + 1] = new_lines
    set_lines(cell, lines)


def edit_02(cells, setup, path):
    add_after(setup, "from ersm.experiments import", ["from ersm.data import capabilities"], path)
    add_after(setup, "base = common.base_config(", [
        'not_applicable = [] if capabilities(DATASET)["scene_metadata"] else [common.not_applicable("what the mask tracks", DATASET, "the scene metadata of cluttered_digits")]'], path)
    guard(find(cells, lambda t: "sparsity.what_it_tracks(" in t, "what_it_tracks", path), "not not_applicable")
    last = find(cells, lambda t: "_ = run.save(" in t, "run.save", path)
    replace(last, '_ = run.save({"claims": [c.to_dict() for c in claims], ',
            '_ = run.save({"claims": [c.to_dict() for c in claims], "not_applicable": not_applicable, ', path)


def edit_03(cells, setup, path):
    add_after(setup, "from ersm.experiments import", ["from ersm.data import capabilities"], path)
    add_after(setup, "base = common.base_config(", ["not_applicable = occlusion.not_applicable(DATASET)",
                                                    'BACKGROUND = capabilities(DATASET)["background_swap"]'], path)
    train = find(cells, lambda t: "spurious = {rho:" in t, "spurious = {rho:", path)
    replace(train, "background_label_correlation=rho) for rho in RHOS}",
            "background_label_correlation=rho) for rho in (RHOS if BACKGROUND else [])}", path)
    replace(train, "for rho, runs in spurious.items()])", "for rho, runs in spurious.items()] or [pd.DataFrame()])", path)
    correct = find(cells, lambda t: "occlusion.occlusion_correctness(" in t, "occlusion_correctness", path)
    replace(correct, "occlusion.CONDITIONS if name in", "occlusion.conditions_for(DATASET) if name in", path)
    report = find(cells, lambda t: "occlusion.curve_area_difference(" in t, "curve_area_difference", path)
    replace(report, "for kind, fill in occlusion.CONDITIONS:", "for kind, fill in occlusion.conditions_for(DATASET):", path)
    guard(find(cells, lambda t: "occlusion.background_gaps(" in t, "background_gaps", path), "BACKGROUND",
          ["gaps, swapped_accuracy, primary_rho, background = {}, {}, None, pd.DataFrame()"])
    last = find(cells, lambda t: "_ = run.save(" in t, "run.save", path)
    replace(last, '"| spurious splits:", convergence.summary_line(spurious_table))',
            '"| spurious splits:", convergence.summary_line(spurious_table) if BACKGROUND else "not applicable")', path)
    replace(last, "for name in BACKGROUND_MODELS if name in common.ERSM_MODELS])",
            "for name in BACKGROUND_MODELS if BACKGROUND and name in common.ERSM_MODELS])", path)
    replace(last, '_ = run.save({"claims": [c.to_dict() for c in claims], ',
            '_ = run.save({"claims": [c.to_dict() for c in claims], "not_applicable": not_applicable, ', path)


def edit_05(cells, setup, path):
    add_after(setup, "from ersm.experiments import", ["from ersm.data import capabilities"], path)
    add_after(setup, "base = common.base_config(", [
        "APPLICABLE, not_applicable = mask_quality.applicable(DATASET)",
        'BACKGROUND = capabilities(DATASET)["background_swap"]',
        'not_applicable += [] if BACKGROUND or not APPLICABLE else [common.not_applicable("background mass share (spurious split)", DATASET, "the spurious splits of cluttered_digits")]'], path)
    train = find(cells, lambda t: "spurious = common.tuned_family(" in t, "spurious = common.tuned_family(", path)
    replace(train, "background_label_correlation=RHO)\n", "background_label_correlation=RHO) if BACKGROUND else {}\n", path)
    last = find(cells, lambda t: "_ = run.save(" in t, "run.save", path)
    replace(last, '_ = run.save({"claims": [c.to_dict() for c in claims], ',
            '_ = run.save({"claims": [c.to_dict() for c in claims], "not_applicable": not_applicable, ', path)
    spurious_views = find(cells, lambda t: "spurious_views = " in t, "spurious_views", path)
    guard(spurious_views, "APPLICABLE and BACKGROUND")
    start = cells.index(setup)
    for cell in cells[start + 1:]:
        if cell["cell_type"] != "code" or cell is spurious_views:
            continue
        guard(cell, "APPLICABLE", ['_ = run.save({"claims": [], "not_applicable": not_applicable})'] if cell is last else None)


EDITS = {"02": edit_02, "03": edit_03, "05": edit_05}


def edit(path: Path) -> bool:
    """Edit one notebook in place; True when it changed."""
    text = path.read_text()
    notebook = json.loads(text)
    before = json.loads(text)
    cells = notebook["cells"]
    setup = common_edits(cells, path)
    if path.name[:2] in EDITS:
        EDITS[path.name[:2]](cells, setup, path)
    if notebook == before:  # compare content, not bytes: papermill and json format a notebook differently
        return False
    path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
    return True


def main(argv: list[str]) -> None:
    folder = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent / "notebooks"
    for path in sorted(folder.glob("0*.ipynb")):
        print(f"{path.name}: {'edited' if edit(path) else 'unchanged'}")


if __name__ == "__main__":
    main(sys.argv)
