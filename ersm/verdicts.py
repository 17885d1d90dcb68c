"""Verdict rules, fixed before any run, and the claim rows they produce.

Every rule reads only an *oriented* difference (``ERSM - baseline`` where larger is better,
``baseline - ERSM`` where smaller is better, so a positive value always favours the claim)
and its 95% interval ``[lo, hi]``:

- superiority: SUPPORTED if ``lo > 0``; NOT SUPPORTED if ``hi < 0``; else INCONCLUSIVE.
- non-inferiority with margin ``M``: SUPPORTED if ``lo > -M``; NOT SUPPORTED if ``hi < -M``;
  else INCONCLUSIVE.
- threshold (a single quantity must clear a bar ``t``): SUPPORTED if ``lo > t``; NOT SUPPORTED
  if ``hi < t``; else INCONCLUSIVE.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "SUPPORTED", "NOT SUPPORTED", "INCONCLUSIVE"


def superiority(lo: float, hi: float) -> str:
    return threshold(lo, hi, 0.0)


def non_inferiority(lo: float, hi: float, margin: float) -> str:
    return threshold(lo, hi, -margin)


def threshold(lo: float, hi: float, bar: float) -> str:
    if lo > bar:
        return SUPPORTED
    if hi < bar:
        return NOT_SUPPORTED
    return INCONCLUSIVE


@dataclass
class Claim:
    """One row of the claims table."""

    claim: str
    metric: str
    baseline_name: str
    baseline: float
    ersm: float
    difference: float
    lo: float
    hi: float
    rule: str
    verdict: str

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self, digits: int = 1) -> str:
        f = f"{{:.{digits}f}}"
        return (f"Claim: {self.claim}\nMetric: {self.metric}\nRule (fixed before the run): {self.rule}\n"
                f"{self.baseline_name}: {f.format(self.baseline)} | ERSM: {f.format(self.ersm)} | "
                f"difference: {f.format(self.difference)} [95% CI {f.format(self.lo)}, {f.format(self.hi)}]\n"
                f"VERDICT: {self.verdict}")


def claims_markdown(rows: list[dict], digits: int = 2) -> str:
    """A Markdown table: claim | metric | baseline | ERSM | difference [95% CI] | verdict."""
    f = f"{{:.{digits}f}}"
    lines = ["| claim | metric | baseline | ERSM | difference [95% CI] | verdict |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['claim']} | {r['metric']} | {r['baseline_name']}: {f.format(r['baseline'])} | "
                     f"{f.format(r['ersm'])} | {f.format(r['difference'])} [{f.format(r['lo'])}, {f.format(r['hi'])}] | "
                     f"**{r['verdict']}** |")
    return "\n".join(lines) + "\n"
