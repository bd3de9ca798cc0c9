"""The auto-remediation policy: after a reconciliation, what remediation may do on its own.

A report is applied automatically only when the policy allows every actionable finding kind
present in it, the circuit breaker passes, and the database owner opted in to writes
(INTEGRITY_ALLOW_WRITES=1); otherwise remediation runs as a dry run, with the reason, so a
person sees what would change. An inventory sanity check that failed in the reconciliation's
run keeps it a dry run too. Pure: the Dagster sensor feeds it the report snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from integrity import settings
from integrity.diff import ACTION_KINDS, ACTIONS, ReconciliationReport
from integrity.errors import RemediationRefused, SpecError
from integrity.remediation import RemediationOptions, plan_remediation
from integrity.spec import PolicySpec

AUTO_REMEDIATE_ENV = settings.ENV_AUTO_REMEDIATE

Mode = Literal["apply", "dry_run", "skip"]
APPLY: Mode = "apply"
DRY_RUN: Mode = "dry_run"
SKIP: Mode = "skip"


def allowed_kinds(policy: PolicySpec, configured: str | None = None) -> tuple[str, ...]:
    """The kinds the policy applies: `configured` (INTEGRITY_AUTO_REMEDIATE as Settings read it:
    a comma list, or 'none') when set, else the spec's `policy.auto_remediate`. An unknown kind
    raises SpecError naming the variable."""
    raw = configured
    if raw is None:
        return tuple(policy.auto_remediate)
    names = [name.strip() for name in raw.split(",") if name.strip()]
    if names == ["none"]:
        return ()
    for name in names:
        if name not in ACTION_KINDS:
            raise SpecError(
                f"{AUTO_REMEDIATE_ENV}: {name!r} is not a kind remediation acts on "
                f"(a comma list of {', '.join(ACTION_KINDS)}, or none)"
            )
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class RemediationDecision:
    """What to launch for one report: apply, dry run or nothing, with which kinds and why."""

    mode: Mode
    kinds: tuple[str, ...]
    reason: str

    @property
    def dry_run(self) -> bool:
        return self.mode != APPLY


def decide_remediation(
    report: ReconciliationReport,
    allowed: Sequence[str],
    *,
    max_change_ratio: float,
    writes_allowed: bool,
    failed_checks: Mapping[str, str] | None = None,
) -> RemediationDecision:
    """Apply only if every actionable kind present is allowed, the breaker passes and writes
    are opted in; else a dry run. Nothing for a report with nothing to act on, or an
    incomplete one (remediation refuses it, dry run or not).

    `failed_checks` (inventory sanity check name -> its description) also keeps it a dry run:
    the breaker only judges rows to mark, while an empty or shrunken inventory (a wrong
    database or bucket) would make every object an orphan to re-queue.
    """
    if not report.complete:
        return RemediationDecision(
            SKIP,
            (),
            "the report is incomplete, so remediation would refuse it: "
            + ("; ".join(report.reasons) or "reason unknown"),
        )
    counts = report.counts()
    present = tuple(kind for kind in ACTION_KINDS if counts[kind])
    if not present:
        return RemediationDecision(SKIP, (), "nothing to act on")
    try:
        plan_remediation(
            report,
            RemediationOptions(
                kinds=present, tenant=report.scope, max_change_ratio=max_change_ratio
            ),
        )
    except RemediationRefused as exc:
        # The breaker only judges rows to mark `error`: dry-run the other kinds (a dry run
        # would be refused too), so a person still sees what else would change.
        # With no other kind, the dry run changes nothing but still shows the refusal.
        others = tuple(kind for kind in present if ACTIONS[kind] != "mark_error")
        return RemediationDecision(DRY_RUN, others, str(exc).split(". ", 1)[0])
    if failed_checks:
        name, description = next(iter(sorted(failed_checks.items())))
        return RemediationDecision(DRY_RUN, present, f"{name} failed: {description}")
    not_allowed = [kind for kind in present if kind not in allowed]
    if not_allowed:
        return RemediationDecision(
            DRY_RUN, present, "the policy does not allow " + ", ".join(not_allowed)
        )
    if not writes_allowed:
        return RemediationDecision(
            DRY_RUN, present, f"{settings.ENV_ALLOW_WRITES}=1 is not set for the sensor"
        )
    return RemediationDecision(APPLY, present, "the policy allows " + ", ".join(present))
