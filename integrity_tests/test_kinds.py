"""Finding kinds defined in one place: the registry's rules, the docs and the CLI help checked
against it, and a new kind reaching every derived place from its definition alone.

The new-kind tests are the point: one gives the checks, the counts and the summary a registry
with one more kind and feeds them a detector's findings on a real world (a directory store and
SQLite); the other adds a kind to a copy of the package's registry, changing nothing else, and
runs the copy in a fresh interpreter: the spec, the asset checks, the CLI, policy and the demo
all know it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

import integrity
from integrity import cli, demo
from integrity.checks import ERROR, PASSED, WARN, evaluate_findings, kind_denominators
from integrity.cli import output
from integrity.defs.reconciliation.checks import FINDING_CHECK_SPECS, finding_check_specs
from integrity.diff import (
    ACTION_KINDS,
    ACTIONS,
    FINDING_COLUMNS,
    FINDING_KINDS,
    REPORT_ONLY_KINDS,
    DiffOptions,
    ReconciliationReport,
    diff_inventories,
)
from integrity.errors import SpecError
from integrity.inventory import StorageInventory, list_storage, read_database
from integrity.kinds import (
    KINDS,
    README_TABLE_HEADER,
    FindingKind,
    readme_table,
    thresholds_yaml,
)
from integrity.spec import (
    ActionKind,
    ReferenceSpec,
    default_spec,
    finding_checks_model,
    parse_spec,
)
from integrity.storage.local import LocalStorage
from integrity_tests.world import HOUR, World

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(integrity.__file__).resolve().parent


def _docs() -> list[Path]:
    """The README and every page under docs/ (the finding-kind table may live in either)."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _block_after(text: str, first_line: str) -> str:
    """The lines from `first_line` up to the first line that does not continue its table."""
    start = text.index(first_line)
    lines = []
    for line in text[start:].splitlines():
        if not line.startswith("|"):
            break
        lines.append(line)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the registry


def test_the_registry_gives_the_diff_its_stable_names() -> None:
    assert FINDING_KINDS == (
        "orphan_object",
        "stuck_job",
        "missing_original",
        "missing_staged",
        "progress_behind",
        "foreign_reference",
        "normalization_mismatch",
        "invalid_reference",
    )
    assert ACTIONS == {
        "orphan_object": "requeue",
        "stuck_job": "retry",
        "missing_original": "mark_error",
        "missing_staged": "mark_error",
        "progress_behind": "fix_progress",
        "foreign_reference": "none",
        "normalization_mismatch": "none",
        "invalid_reference": "none",
    }
    assert (*ACTION_KINDS, *REPORT_ONLY_KINDS) == FINDING_KINDS
    assert REPORT_ONLY_KINDS == ("foreign_reference", "normalization_mismatch", "invalid_reference")
    assert KINDS.queueing_kinds == ("orphan_object", "stuck_job")
    assert KINDS.reference_kinds == ("missing_original", "missing_staged")
    assert [k.check for k in KINDS] == list(FINDING_KINDS)  # stored check results keep names


def test_the_spec_takes_its_kinds_and_defaults_from_the_registry() -> None:
    findings = default_spec().checks.findings
    for kind in KINDS:
        thresholds = findings.for_kind(kind.name)
        assert (thresholds.warn_above, thresholds.error_above) == (
            kind.warn_above,
            kind.error_above,
        )
        # severity 'warn': a red check of the kind only warns with its defaults
        assert (thresholds.error_above is None) == (kind.severity == "warn")
    assert ActionKind.__args__ == ACTION_KINDS
    assert ReferenceSpec.model_fields["kind"].default == "missing_original"
    reference = {"column": "c", "kind": "stuck_job"}
    table = {"table": "t", "tenant": "o", "references": [reference]}
    with pytest.raises(SpecError, match=r"Input should be 'missing_original' or 'missing_staged'"):
        parse_spec({"tables": {"t": table}, "uploads": None})


def test_a_threshold_left_out_keeps_the_kinds_own_default() -> None:
    spec = parse_spec(
        {
            "tables": {},
            "uploads": None,
            "checks": {
                "findings": {
                    "orphan_object": {"warn_above": 20},
                    "foreign_reference": {"warn_above": 3},
                    "missing_staged": {"error_above": "0.5%"},
                }
            },
        }
    )
    findings = spec.checks.findings
    assert findings.for_kind("orphan_object").model_dump() == {
        "warn_above": 20,
        "error_above": "5%",
    }
    assert findings.for_kind("foreign_reference").model_dump() == {
        "warn_above": 3,
        "error_above": None,
    }
    assert findings.for_kind("missing_staged").model_dump() == {
        "warn_above": 0,
        "error_above": "0.5%",
    }
    typo = {"findings": {"orphan_object": {"warn_abov": 1}}}
    with pytest.raises(SpecError, match=r"checks\.findings\.orphan_object\.warn_abov: unknown"):
        parse_spec({"tables": {}, "uploads": None, "checks": typo})


def test_severity_is_what_a_red_check_means() -> None:
    spec = default_spec()
    report = _empty_report(objects=100, rows=100, jobs=100, plans=100)
    findings = [
        {"kind": kind, "key": f"k{i}", "row_id": f"r{i}", "action": ACTIONS[kind]}
        for kind in FINDING_KINDS
        for i in range(50)
    ]
    report = dataclasses.replace(report, findings=_frame(findings))
    levels = {o.check: o.level for o in evaluate_findings(report, spec)}
    assert levels == {k.name: ERROR if k.severity == "error" else WARN for k in KINDS}
    assert {k for k, v in levels.items() if v == WARN} == {
        "foreign_reference",
        "normalization_mismatch",
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "Bad-Name"}, "lower-case identifier"),
        ({"action": "delete"}, "action must be one of"),
        ({"severity": "warn"}, "severity 'warn' means error_above None"),
        ({"error_above": None}, "severity 'error' needs an error_above"),
        ({"warn_above": "lots"}, "warn_above must be a count, a share or None"),
        ({"action": "mark_error"}, "a mark_error kind, and only one, has an error_message"),
        ({"reference": "original", "enabled_by": "uploads"}, "enabled by 'tables'"),
        ({"meaning": "a | b"}, "no '|'"),
    ],
)
def test_a_bad_definition_is_refused_where_it_is_written(change: dict, message: str) -> None:
    fields = dataclasses.asdict(_empty_upload()) | change
    fields["age"] = None
    with pytest.raises(ValueError, match=re.escape(message)):
        FindingKind(**fields)


def test_a_kind_is_defined_once() -> None:
    with pytest.raises(ValueError, match="'orphan_object' is defined twice"):
        KINDS.with_kind(dataclasses.replace(KINDS["orphan_object"], age=None))
    with pytest.raises(KeyError, match="unknown finding kind 'orphan'"):
        KINDS["orphan"]


# --------------------------------------------------------------------------- docs and help


def test_the_readme_table_of_kinds_is_the_registry() -> None:
    tables = [
        _block_after(p.read_text(encoding="utf-8"), README_TABLE_HEADER)
        for p in _docs()
        if README_TABLE_HEADER in p.read_text(encoding="utf-8")
    ]
    # To fix a difference: python -m integrity.kinds prints the table to paste in.
    assert tables == [readme_table()]


def test_the_documented_threshold_defaults_are_the_registry() -> None:
    text = next(
        p.read_text(encoding="utf-8")
        for p in _docs()
        if "checks:\n  findings:\n    orphan_object:" in p.read_text(encoding="utf-8")
    )
    start = text.index("checks:\n  findings:\n") + len("checks:\n  findings:\n")
    block = text[start : text.index("  inventory:", start)]
    assert block == thresholds_yaml()
    parsed = yaml.safe_load("findings:\n" + block)["findings"]
    assert parsed == {
        k.name: {"warn_above": k.warn_above, "error_above": k.error_above} for k in KINDS
    }


def _doc_with(pattern: str) -> str:
    """The one page of the README and docs/ whose text matches `pattern`."""
    [text] = [
        t for p in _docs() if re.search(pattern, t := p.read_text(encoding="utf-8"), re.MULTILINE)
    ]
    return text


def test_the_remediation_table_gives_each_kind_its_action() -> None:
    text = _doc_with(re.escape("| kind | action | what changes |"))
    table = _block_after(text, "| kind | action | what changes |").splitlines()[2:]
    documented = {}
    for row in table:
        names, action = row.split(" | ")[0].strip("| "), row.split(" | ")[1]
        for name in re.findall(r"`([a-z_]+)`", names):
            documented[name] = action
    assert documented == ACTIONS


def test_the_documented_remediate_config_lists_the_acting_kinds() -> None:
    text = _doc_with(r"^      kinds: \[")
    listed = re.search(r"^      kinds: \[([a-z_, ]+)\]$", text, re.MULTILINE)
    assert listed is not None
    assert sorted(listed.group(1).split(", ")) == sorted(ACTION_KINDS)


def test_the_cli_help_lists_the_registry_kinds_and_age_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["reconcile", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "default all: " + ", ".join(ACTION_KINDS) + ")" in help_text
    assert "never orphans (seconds or 90s, 15m, 1h, 3d; default 1h)" in help_text
    assert "is stuck (default 24h)" in help_text
    args = cli.build_parser().parse_args(["reconcile"])
    assert (args.min_age, args.stuck_after) == ("1h", "24h")


def test_the_demo_plants_only_registered_kinds_and_expects_every_kind() -> None:
    assert tuple(demo.EXPECTED_FINDINGS) == FINDING_KINDS
    planted = {k for counts in demo.EXPECTED_BY_TENANT.values() for k in counts}
    assert planted | set(demo._PLANTED) <= set(FINDING_KINDS)
    assert all(demo.EXPECTED_FINDINGS[k] > 0 for k in FINDING_KINDS)  # "every kind planted"


# --------------------------------------------------------------------------- a new kind


def _empty_upload() -> FindingKind:
    return FindingKind(
        name="empty_upload",
        action="requeue",
        description="Uploads of zero bytes: a share of the objects listed.",
        meaning="an upload under `documents/` with no bytes",
        judged_against="objects",
        enabled_by="uploads",
        error_above="10%",
    )


def _frame(findings: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(findings)
    for column in FINDING_COLUMNS:
        if column not in frame:
            frame[column] = None
    frame["updated_at"] = pd.to_datetime(frame["updated_at"], utc=True)
    frame["expected"] = frame["expected"].astype("Int64")
    return frame[FINDING_COLUMNS]


def _empty_report(*, objects: int, rows: int, jobs: int, plans: int) -> ReconciliationReport:
    return ReconciliationReport(
        findings=_frame([]),
        complete=True,
        reasons=[],
        bucket="b",
        scope="__all__",
        objects_checked=objects,
        rows_checked=rows + jobs + plans,
        generated_at=pd.Timestamp("2026-01-01", tz="UTC").to_pydatetime(),
        table_rows={"documents": rows, "processing_jobs": jobs, "plans": plans},
    )


def _detect_empty_uploads(storage: StorageInventory) -> pd.DataFrame:
    """The new kind's detector, vectorised like the diff's: uploads whose size is zero."""
    objects = storage.objects
    empty = objects.loc[objects["key"].str.startswith("documents/") & (objects["size"] == 0)]
    return _frame(
        [
            {"kind": "empty_upload", "key": key, "row_id": key, "action": "requeue"}
            for key in empty["key"]
        ]
    )


def test_a_new_kind_given_in_a_registry_reaches_counts_checks_and_summary(
    sqlite_engine, tmp_path: Path
) -> None:
    root = tmp_path / "media"
    root.mkdir()
    world = World(sqlite_engine, LocalStorage(root))
    for n in range(6):  # six processed uploads, two of them empty
        key = world.obj(f"documents/org-1/d{n}.pdf", b"" if n < 2 else b"%PDF")
        world.document(f"d{n}", key)
    world.obj("documents/org-1/orphan.pdf")  # and one upload nobody recorded
    world.job("documents/org-1/orphan.pdf", "failed")
    storage = list_storage(world.store, None)
    db = read_database(sqlite_engine, world.spec)
    spec = world.spec
    base = diff_inventories(storage, db, spec, DiffOptions(now=world.base + 2 * HOUR))
    registry = KINDS.with_kind(_empty_upload())
    found = pd.concat([base.findings, _detect_empty_uploads(storage)], ignore_index=True)
    report = dataclasses.replace(base, findings=found)

    expected = {**dict.fromkeys(FINDING_KINDS, 0), "orphan_object": 1, "empty_upload": 2}
    assert report.counts(registry) == expected
    assert "empty_upload" not in report.counts()  # the project's own registry does not know it
    assert kind_denominators(report, spec, registry)["empty_upload"] == 7

    outcomes = {o.check: o for o in evaluate_findings(report, spec, registry=registry)}
    assert list(outcomes) == [*FINDING_KINDS, "empty_upload"]
    empty = outcomes["empty_upload"]
    assert empty.level == ERROR  # 2 of 7 objects is above the kind's default 10%
    assert empty.description == (
        "empty_upload: 2 of 7 objects checked (28.57%), above error_above 10%"
    )
    assert [e["key"] for e in empty.metadata["examples"]] == [
        "documents/org-1/d0.pdf",
        "documents/org-1/d1.pdf",
    ]
    assert outcomes["orphan_object"].level == ERROR and outcomes["missing_original"].level == PASSED

    # The spec's thresholds for it: a model from the registry knows its field and its default.
    model = finding_checks_model(registry)
    lenient = model.model_validate({"empty_upload": {"error_above": "50%"}})
    lenient_spec = spec.model_copy(
        update={"checks": spec.checks.model_copy(update={"findings": lenient})}
    )
    again = {o.check: o for o in evaluate_findings(report, lenient_spec, registry=registry)}
    assert again["empty_upload"].level == WARN
    assert model().for_kind("empty_upload").error_above == "10%"
    with pytest.raises(ValueError, match="empty_uplod"):
        model.model_validate({"empty_uplod": {}})

    # The asset checks: one spec more, named and described by the kind.
    specs = finding_check_specs(registry)
    assert [s.name for s in specs] == [*(s.name for s in FINDING_CHECK_SPECS), "empty_upload"]
    assert specs[-1].description == "Uploads of zero bytes: a share of the objects listed."
    assert specs[-1].asset_key == dg.AssetKey("reconciliation_report")

    # The CLI's summary table, and the README table of this registry.
    summary = output.format_summary(report, source="dir", database="db", registry=registry)
    assert re.search(r"^  empty_upload +2  requeue$", summary, re.MULTILINE)
    assert re.search(r"^  total +3$", summary, re.MULTILINE)
    assert readme_table(registry).splitlines()[-1] == (
        "| `empty_upload` | an upload under `documents/` with no bytes | requeue |"
    )


_NEW_KIND = """\
        FindingKind(
            name="empty_upload",
            action="requeue",
            description="Uploads of zero bytes: a share of the objects listed.",
            meaning="an upload under `documents/` with no bytes",
            judged_against="objects",
            enabled_by="uploads",
            warn_above=3,
            error_above="2%",
        ),
"""

_PROBE = r"""
import json, os, sys
import integrity
assert integrity.__file__.startswith(sys.argv[1]), integrity.__file__

from integrity import cli, demo, policy
from integrity.definitions import defs
from integrity.diff import ACTIONS, ACTION_KINDS, FINDING_KINDS, REPORT_ONLY_KINDS
from integrity.errors import SpecError
from integrity.kinds import readme_table
from integrity.spec import default_spec, parse_spec

spec = parse_spec({
    "tables": {"documents": {"table": "documents", "tenant": "organization_id",
                             "references": [{"column": "r2_key"}]}},
    "checks": {"findings": {"empty_upload": {"warn_above": 7}}},
    "policy": {"auto_remediate": ["empty_upload"]},
})
try:
    parse_spec({"tables": {}, "uploads": None, "checks": {"findings": {"empty_uplod": {}}}})
    typo = None
except SpecError as exc:
    typo = str(exc)
import contextlib, io
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
    cli.main(["reconcile", "--help"])
graph = defs.resolve_asset_graph()
print(json.dumps({
    "kinds": FINDING_KINDS,
    "action": ACTIONS["empty_upload"],
    "acting": ACTION_KINDS,
    "report_only": REPORT_ONLY_KINDS,
    "default": default_spec().checks.findings.for_kind("empty_upload").model_dump(),
    "set": spec.checks.findings.for_kind("empty_upload").model_dump(),
    "typo": typo,
    "policy": list(spec.policy.auto_remediate),
    "env_policy": list(policy.allowed_kinds(spec.policy, "empty_upload")),
    "help": " ".join(out.getvalue().split()),
    "checks": sorted(k.name for k in graph.asset_check_keys),
    "demo": demo.EXPECTED_FINDINGS,
    "readme": readme_table().splitlines()[-1],
}))
"""


def test_a_kind_added_to_the_registry_alone_reaches_every_derived_place(tmp_path: Path) -> None:
    copy = tmp_path / "pkg"
    shutil.copytree(PACKAGE, copy / "integrity", ignore=shutil.ignore_patterns("__pycache__"))
    kinds_py = copy / "integrity" / "kinds.py"
    source = kinds_py.read_text(encoding="utf-8")
    # The definition goes last in the registry's tuple, as the module's docstring says.
    end = source.index("\n    )\n)\n", source.index("\nKINDS = KindRegistry(")) + 1
    kinds_py.write_text(source[:end] + _NEW_KIND + source[end:], encoding="utf-8")

    env = {**os.environ, "PYTHONPATH": str(copy), "INTEGRITY_HOME": str(tmp_path / "home")}
    env.pop("INTEGRITY_AUTO_REMEDIATE", None)
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", _PROBE, str(copy)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])

    assert seen["kinds"] == [*FINDING_KINDS, "empty_upload"]
    assert seen["action"] == "requeue"
    assert seen["acting"] == [*ACTION_KINDS, "empty_upload"]
    assert seen["report_only"] == list(REPORT_ONLY_KINDS)
    assert seen["default"] == {"warn_above": 3, "error_above": "2%"}
    assert seen["set"] == {"warn_above": 7, "error_above": "2%"}
    assert seen["typo"] == "spec: checks.findings.empty_uplod: unknown field"
    assert seen["policy"] == seen["env_policy"] == ["empty_upload"]
    assert (
        "stuck_job, missing_original, missing_staged, progress_behind, empty_upload)"
        in (seen["help"])
    )
    assert "empty_upload" in seen["checks"] and set(FINDING_KINDS) <= set(seen["checks"])
    assert seen["demo"] == {**demo.EXPECTED_FINDINGS, "empty_upload": 0}
    assert seen["readme"] == (
        "| `empty_upload` | an upload under `documents/` with no bytes | requeue |"
    )
