"""Key-range shards in Dagster: a shard is a partition, so a backfill fans shards out over
whatever run launcher the instance has (processes on one machine, pods with the K8sRunLauncher).

The graph: `shard_plan` (the K ranges, from a storage snapshot at hand or a sampled listing) and
`shard_db_inventory` (the rows, read once) are unpartitioned; `shard_storage_inventory` and
`shard_report` are partitioned by `shards` (K from INTEGRITY_SHARDS, default 4), each listing
and diffing its range alone; `sharded_report` merges the K reports into the findings of one run
(integrity.shards) and carries one check per finding kind. Snapshots are Parquet files under
the snapshot root, which every run worker must share (a volume in Kubernetes).
"""

# No `from __future__ import annotations` here: Dagster 1.13 checks the `context` parameter's
# annotation as an object (see assets.py).

import os
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import dagster as dg
from dagster import AssetExecutionContext
from pydantic import Field

from integrity.checks import evaluate_findings
from integrity.defs.helpers import fail_clearly
from integrity.defs.io_managers import STORAGE_FILE, ParquetSnapshotIOManager
from integrity.defs.names import (
    SHARD_DB_INVENTORY_KEY,
    SHARD_IO_MANAGER,
    SHARD_MERGE_JOB,
    SHARD_PLAN_JOB,
    SHARD_PLAN_KEY,
    SHARD_REPORT_KEY,
    SHARD_STORAGE_INVENTORY_KEY,
    SHARD_TAG,
    SHARDED_REPORT_KEY,
    SHARDS_GROUP,
    SHARDS_JOB,
)
from integrity.defs.reconciliation.assets import ReportConfig, examples_table
from integrity.defs.reconciliation.checks import FINDING_CHECK_DESCRIPTIONS, to_result
from integrity.defs.resources import DatabaseResource, SpecResource, StorageResource
from integrity.diff import FINDING_KINDS, DiffOptions
from integrity.errors import UsageError
from integrity.inventory import (
    ALL_TENANTS,
    DatabaseInventory,
    StorageInventory,
    check_database,
    read_database,
)
from integrity.reconcile import storage_prefixes, tenant_scope
from integrity.shards import (
    PLAN_FILE,
    VARIANTS_FILE,
    MergeDetail,
    ShardPlan,
    ShardReport,
    check_shard_count,
    diff_shard,
    explicit_plan,
    list_shard,
    lookup_in_snapshot,
    merge_shard_reports,
    plan_from_inventory,
    plan_from_sample,
)
from integrity.spec import check_tenant

ENV_SHARDS = "INTEGRITY_SHARDS"
DEFAULT_SHARDS = 4
SHARDS = "shards"


def shard_count() -> int:
    """K from INTEGRITY_SHARDS (default 4); read when the definitions load, offline."""
    raw = os.environ.get(ENV_SHARDS, "").strip()
    return check_shard_count(raw, ENV_SHARDS) if raw else DEFAULT_SHARDS


def shard_keys(count: int) -> list[str]:
    """Partition keys that sort as the shards do: 000, 001, ..."""
    return [f"{i:03d}" for i in range(count)]


shard_partitions = dg.StaticPartitionsDefinition(shard_keys(shard_count()))


def shard_index(partition_key: str) -> int:
    try:
        return int(partition_key)
    except ValueError:
        raise dg.Failure(description=f"{partition_key!r} is not a shard partition") from None


class ShardSnapshotIOManager(ParquetSnapshotIOManager):
    """The snapshot IO manager, plus shard plans and shard reports, and all shards at once."""

    def storage_snapshot(self, shard: str) -> Path:
        """Where one shard's storage inventory is, for the merge's filtered lookups."""
        return self._dir(shard_storage_inventory.key, shard) / STORAGE_FILE

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        if isinstance(obj, ShardPlan | ShardReport):
            path = obj.save(self.snapshot_dir(context))
            context.add_output_metadata({"snapshot": dg.MetadataValue.path(str(path))})
            return
        super().handle_output(context, obj)  # type: ignore[arg-type]

    def _load_one(self, directory: Path, context: dg.InputContext) -> object:
        if (directory / VARIANTS_FILE).is_file():
            return ShardReport.load(directory)
        if (directory / PLAN_FILE).is_file():
            return ShardPlan.load(directory)
        return super().load_input(context)

    def load_input(self, context: dg.InputContext) -> object:
        # An unpartitioned asset (the merge) reading a partitioned one gets every shard.
        if context.has_asset_partitions and not context.has_partition_key:
            root = self._dir(context.asset_key, None).parent
            return {
                key: ShardReport.load(root / key)
                for key in context.asset_partition_keys
                if (root / key / VARIANTS_FILE).is_file()
            }
        return self._load_one(self.snapshot_dir(context), context)


class ShardPlanConfig(dg.Config):
    """Which key space to split and where the boundaries come from."""

    tenant: str = Field(
        default=ALL_TENANTS, description="The tenant whose key space is split, or __all__."
    )
    storage_snapshot: str | None = Field(
        default=None,
        description="A storage inventory snapshot (objects.parquet) to take object quantiles "
        "from; unset: a sampled listing.",
    )
    boundaries: list[str] | None = Field(
        default=None,
        description="Explicit StartAfter boundaries (K-1 of them); they are snapped all the same.",
    )
    max_probes: int = Field(
        default=16, ge=1, le=1000, description="Delimiter probes of a sampled listing."
    )


@dg.asset(
    key=SHARD_PLAN_KEY, group_name=SHARDS_GROUP, kinds={"s3"}, io_manager_key=SHARD_IO_MANAGER
)
def shard_plan(
    context: AssetExecutionContext,
    config: ShardPlanConfig,
    storage: StorageResource,
    spec: SpecResource,
) -> ShardPlan:
    """The K key ranges of the key space, snapped so no plan's sheets straddle two shards.

    From object quantiles of a snapshot at hand, else from a few delimiter probes (never a full
    listing); K is the number of `shards` partitions (INTEGRITY_SHARDS).
    """
    count = len(shard_partitions.get_partition_keys())
    with fail_clearly():
        tenant = tenant_scope(check_tenant(config.tenant, "shard_plan tenant"))
        reconciliation_spec = spec.load()
        if config.boundaries is not None:
            if len(config.boundaries) != count - 1:
                raise UsageError(
                    f"boundaries: {len(config.boundaries)} given, but {count} shards need "
                    f"{count - 1} ({ENV_SHARDS}={count})"
                )
            plan = explicit_plan(config.boundaries, reconciliation_spec, tenant=tenant)
        elif config.storage_snapshot:
            path = Path(config.storage_snapshot).expanduser()
            if not path.is_file():
                raise UsageError(f"storage_snapshot: {path} is not a file")
            inventory = StorageInventory.load(path)
            plan = plan_from_inventory(inventory, count, reconciliation_spec, tenant=tenant)
        else:
            store = storage.get_store()
            store.check_access()
            plan = plan_from_sample(
                store,
                count,
                reconciliation_spec,
                storage_prefixes(reconciliation_spec, tenant),
                tenant=tenant,
                max_probes=config.max_probes,
            )
    context.add_output_metadata(
        {
            "shards": dg.MetadataValue.int(plan.shards),
            "source": dg.MetadataValue.text(plan.source),
            "tenant": dg.MetadataValue.text(plan.tenant or ALL_TENANTS),
            "fingerprint": dg.MetadataValue.text(plan.fingerprint),
        }
    )
    return plan


@dg.asset(
    key=SHARD_DB_INVENTORY_KEY,
    group_name=SHARDS_GROUP,
    kinds={"sql", "parquet"},
    io_manager_key=SHARD_IO_MANAGER,
)
def shard_db_inventory(
    context: AssetExecutionContext,
    shard_plan: ShardPlan,
    database: DatabaseResource,
    spec: SpecResource,
) -> DatabaseInventory:
    """The rows of the plan's scope, read once in bulk; every shard and the merge use this snapshot."""
    with fail_clearly():
        reconciliation_spec = spec.load()
        with database.engine() as engine:
            check_database(engine, reconciliation_spec)
            inventory = read_database(engine, reconciliation_spec, tenant=shard_plan.tenant)
    context.add_output_metadata(
        {
            "rows_read": dg.MetadataValue.int(inventory.rows),
            "seconds": dg.MetadataValue.float(round(inventory.seconds, 3)),
            "complete": dg.MetadataValue.bool(inventory.complete),
        }
    )
    return inventory


@dg.asset(
    key=SHARD_STORAGE_INVENTORY_KEY,
    group_name=SHARDS_GROUP,
    partitions_def=shard_partitions,
    kinds={"s3", "parquet"},
    io_manager_key=SHARD_IO_MANAGER,
)
def shard_storage_inventory(
    context: AssetExecutionContext,
    shard_plan: ShardPlan,
    shard_db_inventory: DatabaseInventory,
    storage: StorageResource,
    spec: SpecResource,
) -> StorageInventory:
    """One shard's range of the key space, listed from its StartAfter to its end and no further."""
    shard = shard_index(context.partition_key)
    with fail_clearly():
        if shard >= shard_plan.shards:
            raise UsageError(
                f"shard {context.partition_key} is not in the plan's {shard_plan.shards} "
                "shards: materialize shard_plan again"
            )
        reconciliation_spec = spec.load()
        store = storage.get_store()
        store.check_access()
        inventory = list_shard(
            store,
            shard_db_inventory,
            reconciliation_spec,
            shard_plan,
            shard,
            storage_prefixes(reconciliation_spec, shard_plan.tenant),
        )
    after, end = shard_plan.key_range(shard)
    context.add_output_metadata(
        {
            "objects_listed": dg.MetadataValue.int(inventory.count),
            "requests": dg.MetadataValue.int(inventory.requests),
            "seconds": dg.MetadataValue.float(round(inventory.seconds, 3)),
            "start_after": dg.MetadataValue.text(repr(after)[:300]),
            "end": dg.MetadataValue.text(repr(end)[:300]),
            "complete": dg.MetadataValue.bool(inventory.complete),
        }
    )
    return inventory


@dg.asset(
    key=SHARD_REPORT_KEY,
    group_name=SHARDS_GROUP,
    partitions_def=shard_partitions,
    kinds={"pandas", "parquet"},
    io_manager_key=SHARD_IO_MANAGER,
)
def shard_report(
    context: AssetExecutionContext,
    config: ReportConfig,
    shard_plan: ShardPlan,
    shard_storage_inventory: StorageInventory,
    shard_db_inventory: DatabaseInventory,
    spec: SpecResource,
) -> ShardReport:
    """One shard's findings: its objects and the references whose key is in its range."""
    shard = shard_index(context.partition_key)
    options = DiffOptions(
        min_age=timedelta(seconds=config.min_age),
        stuck_after=timedelta(seconds=config.stuck_after),
        tenant=shard_plan.tenant,
        status=config.status,
    )
    with fail_clearly():
        reconciliation_spec = spec.load()
    started = time.perf_counter()
    part = diff_shard(
        shard_storage_inventory, shard_db_inventory, reconciliation_spec, shard_plan, shard, options
    )
    part.report.timings["total_seconds"] = (
        shard_storage_inventory.seconds + time.perf_counter() - started
    )
    counts = part.report.counts()
    context.add_output_metadata(
        {
            **{f"findings/{kind}": dg.MetadataValue.int(counts[kind]) for kind in FINDING_KINDS},
            "variants": dg.MetadataValue.int(len(part.variants)),
            "plan": dg.MetadataValue.text(shard_plan.fingerprint),
        }
    )
    return part


MERGED_CHECK_SPECS = [
    dg.AssetCheckSpec(kind, asset=SHARDED_REPORT_KEY, description=FINDING_CHECK_DESCRIPTIONS[kind])
    for kind in FINDING_KINDS
]


@dg.asset(
    key=SHARDED_REPORT_KEY,
    group_name=SHARDS_GROUP,
    kinds={"pandas", "parquet"},
    io_manager_key=SHARD_IO_MANAGER,
    check_specs=MERGED_CHECK_SPECS,
)
def sharded_report(
    context: AssetExecutionContext,
    shard_plan: ShardPlan,
    shard_report: dict[str, ShardReport],
    shard_db_inventory: DatabaseInventory,
    spec: SpecResource,
    shard_io_manager: dg.ResourceParam[ShardSnapshotIOManager],
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """The K shard reports merged into the findings one unsharded run gives (integrity.shards).

    Units whose spellings span shards are re-judged from the shards' snapshots, by lookups of
    those few keys; each finding kind is checked against the spec's thresholds.
    """
    parts = list(shard_report.values())
    detail = MergeDetail()
    with fail_clearly():
        reconciliation_spec = spec.load()
        if any(p.plan.fingerprint != shard_plan.fingerprint for p in parts):
            raise UsageError(
                "some shard reports come from an earlier shard plan: materialize every shard "
                "partition of reconcile_shards again"
            )
        report = merge_shard_reports(
            parts,
            shard_db_inventory,
            reconciliation_spec,
            lambda shard, keys: lookup_in_snapshot(
                shard_io_manager.storage_snapshot(shard_keys(shard_plan.shards)[shard]), keys
            ),
            detail,
        )
    counts = report.counts()
    yield dg.Output(
        report,
        metadata={
            **{f"findings/{kind}": dg.MetadataValue.int(counts[kind]) for kind in FINDING_KINDS},
            "findings/total": dg.MetadataValue.int(len(report.findings)),
            "objects_listed": dg.MetadataValue.int(report.objects_checked),
            "rows_read": dg.MetadataValue.int(report.rows_checked),
            "shards": dg.MetadataValue.int(len(parts)),
            "rejudged_classes": dg.MetadataValue.int(detail.classes),
            "rejudged_findings": dg.MetadataValue.int(detail.replaced),
            "complete": dg.MetadataValue.bool(report.complete),
            "examples": examples_table(report),
        },
    )
    for outcome in evaluate_findings(report, reconciliation_spec, list(FINDING_KINDS)):
        yield to_result(outcome, sharded_report.key)


shard_assets = [
    shard_plan,
    shard_db_inventory,
    shard_storage_inventory,
    shard_report,
    sharded_report,
]

plan_shards_job = dg.define_asset_job(
    name=SHARD_PLAN_JOB,
    selection=[shard_plan, shard_db_inventory],
    executor_def=dg.in_process_executor,
    description="Split the key space into the shards' ranges and read the database once.",
)
reconcile_shards_job = dg.define_asset_job(
    name=SHARDS_JOB,
    selection=[shard_storage_inventory, shard_report],
    executor_def=dg.in_process_executor,
    tags={SHARD_TAG: "true"},
    description="List and diff one shard; a backfill over the shards runs one run per shard.",
)
merge_shards_job = dg.define_asset_job(
    name=SHARD_MERGE_JOB,
    selection=[sharded_report],
    executor_def=dg.in_process_executor,
    description="Merge the shard reports into one report, with its checks.",
)
shard_jobs = [plan_shards_job, reconcile_shards_job, merge_shards_job]


def shard_resources() -> dict[str, dg.ConfigurableIOManager]:
    return {SHARD_IO_MANAGER: ShardSnapshotIOManager()}
