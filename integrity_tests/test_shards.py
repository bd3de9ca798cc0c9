"""Key-range shards: boundary choice, ranged listing, and K shard reports merged into exactly
the findings of one unsharded run, with drift of every kind planted across the boundaries."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from integrity.diff import DiffOptions, ReconciliationReport
from integrity.errors import UsageError
from integrity.inventory import list_storage, read_database
from integrity.shards import (
    MergeDetail,
    ShardPlan,
    ShardReport,
    diff_shard,
    explicit_plan,
    list_shard,
    merge_shard_reports,
    plan_from_inventory,
    plan_from_sample,
    plan_shards,
    restrict_inventory,
    snap,
)
from integrity.spec import default_spec
from integrity.storage import LocalStorage, S3Storage
from integrity_tests.world import HOUR, World

SPEC = default_spec()
SHEETS = "organizations/org-1/projects/p/plans/plan-1/sheets/"

# Pairs that one run judges together although their keys sort far apart.
SCAN_LISTED, SCAN_ROW = "documents/org-1/Scan.pdf", "documents/org-1/scan.pdf"
SPACE_LISTED, SPACE_ROW = "documents/org-1/a b.pdf", "documents/org-1/a%20b.pdf"
CAFE_LISTED, CAFE_ROW = "documents/org-2/caf\u00e9.pdf", "documents/org-2/cafe\u0301.pdf"
REPORT_LISTED, REPORT_VARIANT = "documents/org-3/Report.pdf", "documents/org-3/report.pdf"


def plant(world: World) -> None:
    """Drift of every kind, next to near-matches that straddle likely boundaries."""
    w = world
    w.document("d-ok", w.obj("documents/org-1/ok.pdf"))
    w.obj("documents/org-1/orphan.pdf")  # orphan_object
    w.obj("documents/org-1/stuck.pdf")
    w.job("documents/org-1/stuck.pdf", "processing", started_ago=48 * HOUR)  # stuck_job
    w.document("d-missing", "documents/org-1/missing.pdf")  # missing_original
    w.obj(SCAN_LISTED)
    w.document("d-scan", SCAN_ROW)  # normalization_mismatch; the upload is recorded
    w.obj(SPACE_LISTED)
    w.document("d-space", SPACE_ROW)  # found under its decoded spelling: no finding
    w.obj(CAFE_LISTED)
    w.document("d-cafe", CAFE_ROW, org="org-2")  # normalization_mismatch (NFD row, NFC key)
    w.document("d-report", w.obj(REPORT_LISTED), org="org-3")
    w.obj(REPORT_VARIANT)  # orphan: its spelling-twin is listed under its own name
    w.sheet("plan-1", "s1", project="p")
    w.sheet("plan-1", "s2", project="p")
    w.plan("plan-1", 1, 2, project="p")  # progress_behind: 1 < 2 descriptors
    w.sheet("plan-2", "s1", project="p")
    w.plan("plan-2", 1, 1, project="p")
    w.image("i-a", w.obj("images/proj-1/a.jpg"), w.obj("images/proj-1/a-staged.jpg"))
    w.image("i-b", w.obj("images/proj-1/b.jpg"), "images/proj-1/b-staged.jpg")  # missing_staged
    w.image("i-foreign", "s3://another-bucket/x.jpg")  # foreign_reference
    w.image("i-invalid", "https://[broken/x.jpg")  # invalid_reference


EXPECTED_KINDS = {
    "orphan_object": 2,
    "stuck_job": 1,
    "missing_original": 1,
    "missing_staged": 1,
    "progress_behind": 1,
    "foreign_reference": 1,
    "normalization_mismatch": 2,
    "invalid_reference": 1,
}


@pytest.fixture
def world(tmp_path: Path, sqlite_engine: sa.Engine) -> World:
    root = tmp_path / "bucket"
    root.mkdir()
    w = World(sqlite_engine, LocalStorage(root))
    plant(w)
    return w


def run_shards(
    world: World,
    plan: ShardPlan,
    detail: MergeDetail | None = None,
    parts: list[ShardReport] | None = None,
) -> ReconciliationReport:
    """Each shard lists, reads and diffs on its own; then the merge."""
    options = DiffOptions(now=world.base + 2 * HOUR)
    db = read_database(world.engine, world.spec)
    storages = {}
    parts = [] if parts is None else parts
    for shard in range(plan.shards):
        storages[shard] = list_shard(world.store, db, world.spec, plan, shard, None)
        parts.append(diff_shard(storages[shard], db, world.spec, plan, shard, options))

    def lookup(shard: int, keys: list[str]) -> pd.DataFrame:
        objects = storages[shard].objects
        return objects.loc[objects["key"].isin(keys)]

    return merge_shard_reports(parts, db, world.spec, lookup, detail)


def assert_same(merged: ReconciliationReport, one: ReconciliationReport) -> None:
    pd.testing.assert_frame_equal(merged.findings, one.findings)
    assert merged.objects_checked == one.objects_checked
    assert merged.rows_checked == one.rows_checked
    assert merged.complete and one.complete


def listed_keys(world: World) -> list[str]:
    return list(list_storage(world.store).objects["key"])


def test_the_planted_world_has_drift_of_every_kind(world: World) -> None:
    report = world.reconcile()
    assert report.counts() == EXPECTED_KINDS
    orphans = set(report.findings.loc[report.findings["kind"] == "orphan_object", "key"])
    assert orphans == {"documents/org-1/orphan.pdf", REPORT_VARIANT}


# K = 2 with the boundary on each side of each planted unit, and at both ends.
SINGLE_BOUNDARIES = [
    "",
    "documents/org-1/orphan.pdf",
    CAFE_ROW,
    SHEETS + "s1/tiles/s1.dzi",
    "images/proj-1/b-staged.jpg",
    "\U0010ffff",
]


@pytest.mark.parametrize("boundary", SINGLE_BOUNDARIES)
def test_one_boundary_anywhere_gives_the_findings_of_one_run(world: World, boundary: str) -> None:
    assert_same(run_shards(world, explicit_plan([boundary], SPEC)), world.reconcile())


def test_random_four_shard_plans_give_the_findings_of_one_run(world: World) -> None:
    one = world.reconcile()
    keys = sorted(listed_keys(world) + [SCAN_ROW, SPACE_ROW, CAFE_ROW])
    rng = random.Random(11)
    for _ in range(2):
        assert_same(run_shards(world, explicit_plan(rng.sample(keys, 3), SPEC)), one)


def test_near_matches_across_shards_are_judged_in_the_merge(world: World) -> None:
    """A boundary between each pair: concatenation alone would be wrong, the merge is not."""
    boundaries = ["documents/org-1/Z", "documents/org-1/a%", "documents/org-3/a"]
    plan = explicit_plan(boundaries, SPEC)
    assert plan.shard_of([SCAN_LISTED, SCAN_ROW]).tolist() == [0, 2]
    assert plan.shard_of([SPACE_LISTED, SPACE_ROW]).tolist() == [1, 2]
    assert plan.shard_of([REPORT_LISTED, REPORT_VARIANT]).tolist() == [2, 3]
    detail, parts = MergeDetail(), []
    merged = run_shards(world, plan, detail, parts)
    assert_same(merged, world.reconcile())
    # The normal forms spanning shards: scan.pdf, report.pdf, 'a b.pdf' and 'a%20b.pdf'.
    assert detail.classes == 4
    concatenated = pd.concat([p.report.findings for p in parts])
    local = set(zip(concatenated["kind"], concatenated["key"]))
    # Alone, the shards would call both rows missing and an upload recorded elsewhere orphan.
    assert {("missing_original", SCAN_ROW), ("missing_original", SPACE_ROW)} <= local
    assert ("orphan_object", SPACE_LISTED) in local
    near = merged.findings.loc[merged.findings["kind"] == "normalization_mismatch"]
    assert sorted(near["key"]) == [SCAN_ROW, CAFE_ROW]
    assert set(near["detail"]) == {
        f"matches {SCAN_LISTED} only after Unicode/case normalisation",
        f"matches {CAFE_LISTED} only after Unicode/case normalisation",
    }


def test_a_boundary_inside_a_plans_sheets_is_snapped_before_them() -> None:
    inside = SHEETS + "s2/tiles/s2.dzi"
    assert snap(inside, SPEC) == SHEETS[:-1]
    assert snap("documents/org-1/x.pdf", SPEC) == "documents/org-1/x.pdf"
    plan = explicit_plan([inside], SPEC)
    assert plan.boundaries == (SHEETS[:-1],)
    assert plan.shard_of([SHEETS + "s1/tiles/s1.dzi", SHEETS + "s2/tiles/s2.dzi"]).tolist() == [
        1,
        1,
    ]
    # The sheets prefix itself (the finding's key) lands with its descriptors.
    assert plan.shard_of([SHEETS]).tolist() == [1]


def test_unsnapped_boundaries_would_split_a_plans_count(world: World) -> None:
    """What snapping prevents: a raw boundary between two sheets loses progress_behind."""
    raw = ShardPlan((SHEETS + "s1/tiles/s1.dzi",))
    merged = run_shards(world, raw)
    assert merged.counts()["progress_behind"] == 0
    assert (
        run_shards(world, explicit_plan(list(raw.boundaries), SPEC)).counts()["progress_behind"]
        == 1
    )


def _is_partition(plan: ShardPlan, keys: list[str], shards: int) -> None:
    assert plan.shards == shards
    assert list(plan.boundaries) == sorted(plan.boundaries)
    owner = plan.shard_of(keys)
    for shard in range(shards):
        after, end = plan.key_range(shard)
        inside = [k for k in keys if (after is None or k > after) and (end is None or k <= end)]
        assert inside == [k for k, o in zip(keys, owner) if o == shard]
    # No plan's sheets are split.
    sheets = [k for k in keys if k.startswith(SHEETS)]
    assert len(set(plan.shard_of(sheets).tolist())) <= 1


@pytest.mark.parametrize("shards", [1, 2, 4, 7, 50])
def test_plans_from_an_inventory_and_from_a_sample_partition_the_key_space(
    world: World, shards: int
) -> None:
    keys = sorted(listed_keys(world))
    inventory = list_storage(world.store)
    from_inventory = plan_from_inventory(inventory, shards, SPEC)
    from_sample = plan_from_sample(world.store, shards, SPEC)
    assert from_inventory.source == "inventory" and from_sample.source == "sampled listing"
    for plan in (from_inventory, from_sample):
        _is_partition(plan, keys, shards)
        parts = [restrict_inventory(inventory, plan, s) for s in range(shards)]
        assert sorted(k for p in parts for k in p.objects["key"]) == keys


def test_an_inventory_plan_balances_objects(world: World) -> None:
    inventory = list_storage(world.store)
    plan = plan_from_inventory(inventory, 4, SPEC)
    sizes = pd.Series(plan.shard_of(inventory.objects["key"])).value_counts()
    n = len(inventory.objects)
    # Every shard gets objects; one gets at most a quarter plus the unit snapping moved whole
    # (plan-1's sheets: 4 keys).
    assert len(sizes) == 4 and sizes.max() <= -(-n // 4) + 4


def test_more_shards_than_keys_leaves_empty_shards_and_the_same_findings(world: World) -> None:
    keys = listed_keys(world)
    plan = plan_shards(sorted(keys)[:3], 8, SPEC)  # 3 candidate keys for 8 shards
    assert plan.shards == 8
    owners = plan.shard_of(keys)
    assert len(set(owners.tolist())) < plan.shards  # some shards are empty
    assert_same(run_shards(world, plan), world.reconcile())


def test_an_empty_key_space_plans_k_empty_ranges_but_the_last() -> None:
    plan = plan_shards([], 3, SPEC)
    assert plan.boundaries == ("", "")
    assert plan.shard_of(["a", "documents/x"]).tolist() == [2, 2]


def test_a_sample_never_lists_everything(world: World) -> None:
    store = world.store
    before = store.requests
    plan_from_sample(store, 4, SPEC, max_probes=3)
    assert store.requests - before <= 3 + 1


@pytest.mark.parametrize("value", ["0", "-1", "x", "2.5", str(2000), ""])
def test_a_bad_shard_count_is_one_readable_line(value: str) -> None:
    with pytest.raises(UsageError, match="shards: must be a whole number from 1 to 1024"):
        plan_shards(["a"], value, SPEC)  # type: ignore[arg-type]


def test_the_merge_refuses_missing_or_mixed_shards(world: World) -> None:
    plan = explicit_plan(["documents/org-2"], SPEC)
    db = read_database(world.engine, world.spec)
    options = DiffOptions(now=world.base + 2 * HOUR)
    parts = [
        diff_shard(list_shard(world.store, db, SPEC, plan, s, None), db, SPEC, plan, s, options)
        for s in range(2)
    ]
    with pytest.raises(UsageError, match=r"missing \[1\]"):
        merge_shard_reports(parts[:1], db, SPEC, lambda s, k: pd.DataFrame())
    other = explicit_plan(["documents/org-3"], SPEC)
    mixed = [parts[0], ShardReport(1, other, parts[1].report, parts[1].variants)]
    with pytest.raises(UsageError, match="different shard plans"):
        merge_shard_reports(mixed, db, SPEC, lambda s, k: pd.DataFrame())


def test_a_shard_report_round_trips_through_its_files(world: World, tmp_path: Path) -> None:
    plan = explicit_plan(["documents/org-1/Z"], SPEC)
    db = read_database(world.engine, world.spec)
    storage = list_shard(world.store, db, SPEC, plan, 1, None)
    part = diff_shard(storage, db, SPEC, plan, 1, DiffOptions(now=world.base + 2 * HOUR))
    loaded = ShardReport.load(part.save(tmp_path / "shard"))
    assert loaded.shard == 1 and loaded.plan == plan and loaded.backend == "local"
    pd.testing.assert_frame_equal(loaded.report.findings, part.report.findings)
    assert list(loaded.variants["key"]) == list(part.variants["key"])


def test_s3_listing_of_a_range_starts_after_and_stops_at_the_end(s3_client, bucket: str) -> None:
    store = S3Storage(s3_client, bucket, page_size=2)
    keys = [f"k/{i:02d}" for i in range(9)] + ["root-a", "z/1"]
    for key in keys:
        s3_client.put_object(Bucket=bucket, Key=key, Body=b"x")
    got = list_storage(store, None, key_range=("k/02", "k/06"))
    assert list(got.objects["key"]) == ["k/03", "k/04", "k/05", "k/06"]
    got = list_storage(store, ["k/", "z/"], key_range=("k/07", None))
    assert sorted(got.objects["key"]) == ["k/08", "z/1"]
    got = list_storage(store, None, key_range=(None, "k/00"))
    assert sorted(got.objects["key"]) == ["k/00"]
    got = list_storage(store, None, key_range=("k/08", "z"))
    assert sorted(got.objects["key"]) == ["root-a"]
