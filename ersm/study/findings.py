"""What a profile's results say, claim by claim, rendered from ``results/<profile>/*.json``.

The README quotes no number by hand. ``ersm table --profile P --readme`` writes two blocks:
the claims table (``reproduce.claims_table``) and, from this module, the *findings*: per claim
its headline (the verdict of the ERSM paper rows under the rules in force, as the notebook prints it),
the three comparisons each notebook stores as ``key_comparisons``
(``ersm/experiments/controls.py``: ERSM against dense, ERSM against its own ``beta = 0``, the
gate alone, and the built-in controls), the run's facts (commit, wall time per notebook), and,
for claim 01, the corrections that the seed extension after the 5-seed interim look calls for
(``seed_extension_corrections``). ``tests/test_readme_numbers.py`` re-renders every block
and fails, naming the line, where the README differs.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ersm.experiments.common import DENSE, ERSM_MODELS, PAPER
from ersm.metrics.stats import mean_ci
from ersm.paths import repo_root, results_dir, write_between_markers
from ersm.study.verdicts import RULES_TEXT, number_text

NOTEBOOKS = ("01_training", "02_emergent_sparsity", "03_occlusion_robustness", "04_deletion_vs_magnitude", "05_mask_quality")
POCOCK_LEVEL = 1 - 0.0294  # two looks (interim and final) at two-sided alpha 0.05, Pocock's constant boundary


def load(profile: str, notebook: str) -> dict:
    """The results JSON of ``notebook`` in ``results/<profile>/``; a clear error naming the file when absent."""
    path = results_dir(profile) / f"{notebook}.json"
    if not path.exists():
        raise FileNotFoundError(f"no results at {path}: run `ersm reproduce --profile {profile}` first")
    return json.loads(path.read_text())


def headline(record: dict) -> list[str]:
    """The verdicts of the ERSM paper rows of one notebook, as it prints them."""
    notebook = record["notebook"]
    if notebook == "05_mask_quality":
        return [f"overall (the paper's mask against every strong baseline): **{record['overall']}**"] if "overall" in record else []
    lines = [f"{c['claim']}: **{c['verdict']}**" for c in record["claims"]
             if f"({PAPER})" in c["claim"] or f"({PAPER} vs" in c["claim"]]
    if notebook == "02_emergent_sparsity" and PAPER in record.get("adaptivity", {}):
        lines.append(f"adaptivity of {PAPER}, both baselines: **{record['adaptivity'][PAPER]}**")
    return lines


def signed(value, digits: int) -> str:
    text = number_text(value, digits)
    return text if text.startswith("-") or text == "n/a" else f"+{text}"


def comparison_lines(record: dict, digits: int) -> list[str]:
    """The notebook's ``key_comparisons`` as Markdown table rows."""
    f = lambda v: number_text(v, digits)  # noqa: E731
    return [f"| {r['question']} | {r['treatment']} | {r['baseline']} | {r['metric']} | {f(r['treatment_value'])} | "
            f"{f(r['baseline_value'])} | {signed(r['difference'], digits)} [{f(r['lo'])}, {f(r['hi'])}] |"
            for r in record.get("key_comparisons", [])]


def seed_extension_corrections(record: dict, interim_seeds: int = 5) -> list[dict]:
    """Claim 01 after adding seeds to the compared families once the ``interim_seeds``-seed result was seen.

    Per ERSM variant, the paired difference ``variant - dense`` (points): the final t-interval at
    Pocock's level for two looks (``POCOCK_LEVEL``), and the 95% t-interval on the added seeds
    alone (those not seen at the interim). Empty when no seeds were added."""
    frame = pd.DataFrame(record["accuracy"])
    pivot = frame.pivot(index="seed", columns="model", values="accuracy")
    rows = []
    for name in ERSM_MODELS:
        if name not in pivot:
            continue
        paired = (pivot[name] - pivot[DENSE]).dropna().sort_index()
        if len(paired) <= interim_seeds:
            continue
        mean, lo, hi = mean_ci(paired.to_numpy(), level=POCOCK_LEVEL)
        added = paired.iloc[interim_seeds:].to_numpy()
        new_mean, new_lo, new_hi = mean_ci(added, level=0.95)
        rows.append({"model": name, "seeds": len(paired), "difference": mean, "pocock_lo": lo, "pocock_hi": hi,
                     "added_seeds": [int(s) for s in paired.index[interim_seeds:]], "added_difference": new_mean,
                     "added_lo": new_lo, "added_hi": new_hi})
    return rows


def run_facts(records: list[dict]) -> str:
    """One line: the commit(s), the CPU and kernels, and each notebook's wall time from its provenance."""
    commits = sorted({(r["provenance"].get("commit") or "unknown")[:7] for r in records})
    minutes = [r["provenance"]["wall_seconds"] / 60 for r in records]
    cpu = records[0]["provenance"].get("cpu", {})
    times = ", ".join(f"{r['notebook'][:2]}: {m:.1f}" for r, m in zip(records, minutes))
    return (f"Notebooks at commit {', '.join(f'`{c}`' for c in commits)}, on {cpu.get('cpu_model', 'an unrecorded CPU')} "
            f"with {cpu.get('kernels', 'unrecorded')} kernels; wall time {sum(minutes):.1f} min ({times}), "
            f"as each results file records it.")


def findings(profile: str) -> str:
    """The findings block of ``profile``: run facts, then per claim the headline and the comparisons."""
    records = [load(profile, notebook) for notebook in NOTEBOOKS if (results_dir(profile) / f"{notebook}.json").exists()]
    if not records:
        return "No results recorded yet.\n"
    out = [run_facts(records), ""]
    for record in records:
        digits = 1 if record["notebook"] in ("01_training", "03_occlusion_robustness") else 3
        verdicts = headline(record)
        out.append(f"**{record['notebook']}**, verdict{'s' if len(verdicts) > 1 else ''} "
                   f"of the paper's layer ({RULES_TEXT}): " + "; ".join(verdicts) + ".")
        rows = comparison_lines(record, digits)
        if rows:
            out += ["", "| question | treatment | baseline | metric | treatment | baseline | difference [95% CI] |",
                    "|---|---|---|---|---|---|---|", *rows]
        else:
            out += ["", "No controls recorded in this results file (written before they existed)."]
        if record["notebook"] == "01_training":
            corrections = seed_extension_corrections(record)
            if corrections:
                out += ["", "Seeds were added after the interim look, so these corrections stand beside the verdicts "
                            "(ERSM - dense, points): Pocock's two-look interval, and the added seeds alone. "
                        + "; ".join(f"{c['model']}: {signed(c['difference'], 2)} [{number_text(c['pocock_lo'], 2)}, "
                                    f"{number_text(c['pocock_hi'], 2)}] (Pocock, {c['seeds']} seeds), seeds "
                                    f"{c['added_seeds'][0]}-{c['added_seeds'][-1]} alone {signed(c['added_difference'], 2)} "
                                    f"[{number_text(c['added_lo'], 2)}, {number_text(c['added_hi'], 2)}]" for c in corrections) + "."]
        out.append("")
    return "\n".join(out)


def markers(kind: str, profile: str) -> tuple[str, str]:
    return f"<!-- {kind}:{profile} -->", f"<!-- /{kind}:{profile} -->"


def update_readme(profile: str) -> Path:
    """Write the findings of ``profile`` between the README's ``<!-- findings:<profile> -->`` markers."""
    readme = repo_root() / "README.md"
    if not readme.exists():
        raise ValueError(f"no README.md at {readme}")
    write_between_markers(readme, *markers("findings", profile), findings(profile))
    return readme


def rendered_blocks_differ(readme_text: str, profile: str, kind: str, block: str) -> list[str]:
    """The lines of the README's ``kind`` block for ``profile`` that differ from ``block``, each
    as ``"README line K: <text>"`` (empty when they agree)."""
    start, end = markers(kind, profile)
    if start not in readme_text or end not in readme_text:
        return [f"README lacks the markers {start} ... {end}"]
    offset = readme_text.split(start, 1)[0].count("\n") + 2  # the block starts on the line after the marker
    stored = readme_text.split(start, 1)[1].split(end, 1)[0].lstrip("\n").splitlines()
    wanted = block.splitlines()
    problems = [f"README line {offset + i}: {have!r} but the results give {want!r}"
                for i, (have, want) in enumerate(zip(stored, wanted)) if have != want]
    if len(stored) != len(wanted):
        problems.append(f"README block {start} has {len(stored)} lines, the results give {len(wanted)}")
    return problems

