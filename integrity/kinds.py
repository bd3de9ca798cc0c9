"""The finding kinds: each kind one unit, defined here and nowhere else.

A finding kind is one thing the diff can say about an object or a row (an upload nobody
recorded, a row whose original is gone). Its `FindingKind` holds everything the rest of the
project needs to know about it: its name (also its asset check's name), its remediation action,
its descriptions, what a red check means (severity), its default thresholds, what its shares are
judged against, which spec section enables it, and the age setting it waits for. `KINDS` holds
them in the stable order of reports, counts and checks. From it are derived: the diff's
`ACTIONS`, `FINDING_KINDS`, `ACTION_KINDS` and `REPORT_ONLY_KINDS`; the spec's per-kind
thresholds, the kinds a reference column may name and the kinds a policy may apply; the asset
checks; the CLI's kind lists and summary; the demo's expected counts; and the README's table of
kinds, which a test compares with `readme_table()`.

To add a kind, touch two places:
1. define it: a `FindingKind` in `KINDS` below (its place in the tuple is its place in reports);
2. detect it in the diff (integrity/diff.py): emit findings with `kind=<name>` and
   `action=ACTIONS[<name>]`.
Then print the README's table with `python -m integrity.kinds` and paste it in (a test fails
until the README agrees). Only a kind with a new action also needs remediation to learn that
action (integrity/remediation/apply.py), and only one with a new age setting needs it as a
DiffOptions field, a CLI flag and a field of the report asset's config.

Pure core: no Dagster, no pandas; the CLI reads it to write `--help`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, get_args

from integrity.durations import parse_duration

Action = Literal["requeue", "retry", "mark_error", "fix_progress", "none"]
"""What remediation does about a finding; `none`: reported only, a person decides."""
Severity = Literal["error", "warn"]
"""What a red check of the kind means with its default thresholds: ERROR or only WARN."""
JudgedAgainst = Literal["objects", "jobs", "plans", "rows"]
"""What a kind's share is a share of: the objects listed, the processing jobs, the plans, or
the rows of the referencing tables."""
Section = Literal["uploads", "jobs", "plans", "tables"]
"""The spec section whose presence lets the diff find the kind."""
Reference = Literal["original", "staged"]
"""What object a reference column names, for the kinds a spec reference may declare."""

ACTIONS_ORDER: tuple[str, ...] = get_args(Action)
QUEUE_ACTIONS: frozenset[str] = frozenset({"requeue", "retry"})
"""The actions that hand objects to the processing queue."""

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_SHARE = re.compile(r"^\d+(?:\.\d+)?%$")


@dataclass(frozen=True)
class AgeSetting:
    """An age the diff waits before a finding counts (the CLI's --min-age, --stuck-after)."""

    option: str
    """The DiffOptions field, the CLI flag with '-' for '_', the asset config field."""
    default: str
    """As people type it (1h, 24h); `delta` is its value."""
    help: str
    """The CLI flag's help; `{default}` stands for the default."""

    @property
    def delta(self) -> timedelta:
        return parse_duration(self.default, option=self.option)

    @property
    def flag(self) -> str:
        return "--" + self.option.replace("_", "-")

    @property
    def help_text(self) -> str:
        return self.help.format(default=self.default)


@dataclass(frozen=True)
class FindingKind:
    """One finding kind, as reports, checks, the spec, the CLI and the docs know it."""

    name: str
    """The kind in reports and counts, and its asset check's name."""
    action: Action
    description: str
    """One line: the asset check's description in the UI."""
    meaning: str
    """What a finding means, in full (Markdown): the README's table of kinds."""
    judged_against: JudgedAgainst
    enabled_by: Section
    severity: Severity = "error"
    warn_above: int | str | None = 0
    """The default most that passes without WARN: a count, a share ('1%') or None (never)."""
    error_above: int | str | None = "1%"
    """The default most that passes without ERROR; None exactly when severity is 'warn'."""
    error_message: str | None = None
    """For mark_error: the row's error text, unless the spec's reference gives its own."""
    reference: Reference | None = None
    """Set for the kinds a spec reference column may name as what its missing object means."""
    age: AgeSetting | None = None
    """The age setting the kind waits for, if any."""

    def __post_init__(self) -> None:
        where = f"finding kind {self.name!r}"
        if not _NAME.match(self.name):
            raise ValueError(f"{where}: a kind is a lower-case identifier")
        if self.action not in ACTIONS_ORDER:
            raise ValueError(f"{where}: action must be one of {', '.join(ACTIONS_ORDER)}")
        if self.severity not in get_args(Severity):
            raise ValueError(f"{where}: severity must be 'error' or 'warn'")
        if self.judged_against not in get_args(JudgedAgainst):
            raise ValueError(f"{where}: judged_against must be one of {get_args(JudgedAgainst)}")
        if self.enabled_by not in get_args(Section):
            raise ValueError(f"{where}: enabled_by must be one of {get_args(Section)}")
        for field_name in ("warn_above", "error_above"):
            value = getattr(self, field_name)
            if not (
                value is None
                or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)
                or (isinstance(value, str) and _SHARE.match(value))
            ):
                raise ValueError(f"{where}: {field_name} must be a count, a share or None")
        if (self.severity == "warn") != (self.error_above is None):
            raise ValueError(
                f"{where}: severity 'warn' means error_above None (a red check only warns), "
                "and severity 'error' needs an error_above"
            )
        if (self.action == "mark_error") != (self.error_message is not None):
            raise ValueError(f"{where}: a mark_error kind, and only one, has an error_message")
        if self.reference is not None and self.enabled_by != "tables":
            raise ValueError(f"{where}: a kind a reference names is enabled by 'tables'")
        if "\n" in self.description or "|" in self.meaning:
            raise ValueError(f"{where}: descriptions are one line, and no '|' (a table cell)")

    @property
    def check(self) -> str:
        """The asset check's name (the kind's, so that stored check results keep theirs)."""
        return self.name

    @property
    def acts(self) -> bool:
        """Does remediation act on it (or only report it)?"""
        return self.action != "none"

    @property
    def queues(self) -> bool:
        """Does remediating it hand the object to the processing queue?"""
        return self.action in QUEUE_ACTIONS

    @property
    def action_text(self) -> str:
        """The action as the README's table shows it, with the text a row is marked with."""
        if self.error_message is None:
            return self.action
        return f"{self.action}: `{self.error_message}`"


@dataclass(frozen=True)
class KindRegistry:
    """The finding kinds in their stable order, looked up by name."""

    kinds: tuple[FindingKind, ...]

    def __post_init__(self) -> None:
        names = [k.name for k in self.kinds]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"finding kind {repeated[0]!r} is defined twice")
        options = [k.age.option for k in self.kinds if k.age is not None]
        if len(options) != len(set(options)):
            raise ValueError("two finding kinds share one age setting")

    def __iter__(self) -> Iterator[FindingKind]:
        return iter(self.kinds)

    def __len__(self) -> int:
        return len(self.kinds)

    def __contains__(self, name: object) -> bool:
        return any(k.name == name for k in self.kinds)

    def __getitem__(self, name: str) -> FindingKind:
        for kind in self.kinds:
            if kind.name == name:
                return kind
        raise KeyError(f"unknown finding kind {name!r} (one of {', '.join(self.names)})")

    def with_kind(self, kind: FindingKind) -> KindRegistry:
        """This registry with one more kind, last."""
        return KindRegistry((*self.kinds, kind))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.kinds)

    @property
    def actions(self) -> dict[str, str]:
        return {k.name: k.action for k in self.kinds}

    @property
    def action_kinds(self) -> tuple[str, ...]:
        """The kinds remediation acts on, in order."""
        return tuple(k.name for k in self.kinds if k.acts)

    @property
    def report_only_kinds(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.kinds if not k.acts)

    @property
    def queueing_kinds(self) -> tuple[str, ...]:
        """The kinds whose remediation queues objects (a queue must be reachable)."""
        return tuple(k.name for k in self.kinds if k.queues)

    @property
    def reference_kinds(self) -> tuple[str, ...]:
        """The kinds a spec reference column may name (`kind: missing_original`)."""
        return tuple(k.name for k in self.kinds if k.reference is not None)

    def for_reference(self, reference: Reference) -> FindingKind:
        """The kind of a missing object a reference column of this role names."""
        for kind in self.kinds:
            if kind.reference == reference:
                return kind
        raise KeyError(f"no finding kind for a missing {reference} reference")

    def age(self, option: str) -> AgeSetting:
        """The age setting named `option` (min_age, stuck_after)."""
        for kind in self.kinds:
            if kind.age is not None and kind.age.option == option:
                return kind.age
        raise KeyError(f"no finding kind waits for {option!r}")


# The kinds, in the order of reports. Thresholds are the most that passes: a share of what the
# kind is judged against, or a count (0: any finding); None: never.
KINDS = KindRegistry(
    (
        FindingKind(
            name="orphan_object",
            action="requeue",
            description="Uploads nobody recorded: a share of the objects listed.",
            meaning="an upload under `documents/` older than `min_age` (counted from the later "
            "of its LastModified and its job's `updated_at`) with no `documents` row, whose job "
            "is absent, `not_started` or `failed`",
            judged_against="objects",
            enabled_by="uploads",
            error_above="5%",
            age=AgeSetting(
                option="min_age",
                default="1h",
                help="uploads younger than this are never orphans "
                "(seconds or 90s, 15m, 1h, 3d; default {default})",
            ),
        ),
        FindingKind(
            name="stuck_job",
            action="retry",
            description="Jobs processing for too long: a share of the processing jobs.",
            meaning="an upload with no `documents` row whose job is `processing` and started "
            "more than `stuck_after` ago",
            judged_against="jobs",
            enabled_by="jobs",
            error_above="5%",
            age=AgeSetting(
                option="stuck_after",
                default="24h",
                help="a job processing longer than this is stuck (default {default})",
            ),
        ),
        FindingKind(
            name="missing_original",
            action="mark_error",
            description="Rows whose original is not in storage: a share of the referencing rows.",
            meaning="an `images` row (not in `error`) whose `original_url` object is missing, "
            "or a `documents` row whose `r2_key` object is missing",
            judged_against="rows",
            enabled_by="tables",
            error_above="1%",
            error_message="original missing in storage",
            reference="original",
        ),
        FindingKind(
            name="missing_staged",
            action="mark_error",
            description="Rows whose staged copy is not in storage: a share of the referencing "
            "rows.",
            meaning="a `ready` image whose `staged_url` object is missing",
            judged_against="rows",
            enabled_by="tables",
            error_above="1%",
            error_message="staged missing in storage",
            reference="staged",
        ),
        FindingKind(
            name="progress_behind",
            action="fix_progress",
            description="Plans whose progress lags the tiles in storage: a share of the plans.",
            meaning="a plan whose `completed_pages` is below the number of `.dzi` descriptors "
            "under its `sheets/` prefix",
            judged_against="plans",
            enabled_by="plans",
            error_above="5%",
        ),
        FindingKind(
            name="foreign_reference",
            action="none",
            description="Rows pointing into another bucket (reported only).",
            meaning="the URL names another bucket: reported, never counted as missing",
            judged_against="rows",
            enabled_by="tables",
            severity="warn",
            error_above=None,
        ),
        FindingKind(
            name="normalization_mismatch",
            action="none",
            description="References found only after normalising their spelling (reported only).",
            meaning="the reference matches an object only after Unicode normalisation or "
            "case-folding (NFC against NFD, say): reported, never counted as missing",
            judged_against="rows",
            enabled_by="tables",
            severity="warn",
            error_above=None,
        ),
        # Reported only, but a row whose reference names no object hides what missing_original
        # would find, so a share of them is as red as missing originals.
        FindingKind(
            name="invalid_reference",
            action="none",
            description="Rows whose reference names no object (a malformed URL or key; reported "
            "only).",
            meaning="the reference names no object at all: a URL that cannot be parsed "
            "(`http://[::1/b/k.jpg`), no key (`s3://bucket/`), a control character, or a key "
            "the store cannot hold (a storage directory: a `..`, `.` or empty segment, an "
            "absolute path, a segment over 255 bytes; S3: over 1,024 bytes). The finding names "
            "the row, the column and the reason; the rest of the run goes on",
            judged_against="rows",
            enabled_by="tables",
            error_above="1%",
        ),
    )
)


# --------------------------------------------------------------------------- docs

README_TABLE_HEADER = "| kind | what it means | action |"


def readme_table(registry: KindRegistry = KINDS) -> str:
    """The README's table of finding kinds (Markdown), one row per kind in order."""
    lines = [README_TABLE_HEADER, "|---|---|---|"]
    lines += [f"| `{k.name}` | {k.meaning} | {k.action_text} |" for k in registry]
    return "\n".join(lines) + "\n"


def _limit_yaml(value: int | str | None) -> str:
    return "null" if value is None else str(value)


def thresholds_yaml(registry: KindRegistry = KINDS) -> str:
    """The default thresholds as the README's `checks: findings:` block writes them."""
    width = max(len(k.name) for k in registry) + 1
    return "".join(
        f"    {k.name + ':':<{width}} {{warn_above: {_limit_yaml(k.warn_above)}, "
        f"error_above: {_limit_yaml(k.error_above)}}}\n"
        for k in registry
    )


if __name__ == "__main__":
    print(readme_table(), end="")
