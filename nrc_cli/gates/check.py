"""A whole ``nrc check``: requirements and a baseline over one report, as cases."""

from __future__ import annotations

from dataclasses import dataclass

from nrc_cli._version import __version__
from nrc_cli.gates.diff import BaselineResult, Tolerances, compare_baseline
from nrc_cli.gates.evaluate import RequirementResult, evaluate, num_repr
from nrc_cli.grammar import Requirement
from nrc_cli.results import (
    Results,
)


@dataclass(frozen=True)
class Case:
    """One test case of a check, as CI systems show it (a JUnit ``<testcase>``)."""

    name: str
    classname: str
    passed: bool
    message: str
    failure_type: str
    details: str


@dataclass(frozen=True)
class CheckReport:
    """Every requirement and the baseline comparison of one ``nrc check`` run."""

    checkpoint: str
    data: str
    requirements: list[RequirementResult]
    baseline: BaselineResult | None = None

    def cases(self) -> list[Case]:
        """Requirements in order, then the baseline's layer check and its metric columns."""
        cases = []
        for res in self.requirements:
            details = "\n".join(
                f"{v.index} {v.layer}: {'null' if v.value is None else repr(v.value)} "
                f"{'ok' if v.passed else 'FAIL'}"
                for v in res.values
            )
            if not res.values:
                details = f"{res.requirement.column}: {num_repr(res.observed)}"
            cases.append(
                Case(
                    res.requirement.expr,
                    "nrc.check",
                    res.passed,
                    res.message,
                    "RequirementFailed",
                    details,
                )
            )
        if self.baseline is not None:
            b = self.baseline
            details = "\n".join(
                [f"matched: {', '.join(b.matched)}"]
                + [f"removed: {n}" for n in b.only_in_baseline]
                + [f"added: {n}" for n in b.only_in_current]
            )
            cases.append(
                Case(
                    "baseline: layers",
                    "nrc.check.baseline",
                    b.layers_passed,
                    b.layers_message,
                    "LayersChanged",
                    details,
                )
            )
            for col in b.columns:
                details = "\n".join(
                    f"{d.layer}: baseline {num_repr(d.baseline)} current {num_repr(d.current)} "
                    f"diff {num_repr(d.diff)}"
                    for d in col.moved
                )
                cases.append(
                    Case(
                        col.name,
                        "nrc.check.baseline",
                        col.passed,
                        col.message,
                        "BaselineDrift",
                        details,
                    )
                )
        return cases

    @property
    def n_passed(self) -> int:
        return sum(c.passed for c in self.cases())

    @property
    def n_failed(self) -> int:
        return sum(not c.passed for c in self.cases())

    @property
    def passed(self) -> bool:
        return self.n_failed == 0

    @property
    def counts_line(self) -> str:
        """``N passed, M failed``."""
        return f"{self.n_passed} passed, {self.n_failed} failed"

    def to_dict(self) -> dict:
        """The ``--format json`` document of ``nrc check``."""
        return {
            "nrc_version": __version__,
            "checkpoint": self.checkpoint,
            "data": self.data,
            "requirements": [r.to_dict() for r in self.requirements],
            "baseline": None if self.baseline is None else self.baseline.to_dict(),
            "passed": self.n_passed,
            "failed": self.n_failed,
        }


def run_check(
    results: Results,
    requirements: list[Requirement],
    *,
    baseline: Results | None = None,
    baseline_path: str = "",
    tolerances: Tolerances | None = None,
) -> CheckReport:
    """Evaluate every requirement, and the baseline when given, on one report.

    Raises
    ------
    ConfigError
        When a selector matches no layer (before any result is returned).
    """
    evaluated = [evaluate(r, results) for r in requirements]
    base = None
    if baseline is not None:
        base = compare_baseline(results, baseline, tolerances or Tolerances(), path=baseline_path)
    return CheckReport(results.checkpoint, results.data, evaluated, base)
