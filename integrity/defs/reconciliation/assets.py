"""The reconciliation graph: both inventories and their diff, one snapshot per tenant partition.

Each asset is a thin call into the core (no Dagster there): this module only turns partition
keys into tenant scopes, records metadata the UI can plot, and turns the core's one-line
IntegrityError into a step failure with that line.
"""

# No `from __future__ import annotations` here: Dagster 1.13 checks the `context` parameter's
# annotation as an object (a string annotation fails with "Cannot annotate `context`").

import time
from datetime import datetime, timedelta, timezone

import dagster as dg
from dagster import AssetExecutionContext
from pydantic import Field

from integrity.defs.helpers import fail_clearly
from integrity.defs.names import (
    DB_INVENTORY_KEY,
    RECONCILIATION_GROUP,
    REPORT_KEY,
    SNAPSHOT_IO_MANAGER,
    STORAGE_INVENTORY_KEY,
)
from integrity.defs.partitions import ALL_TENANTS, tenant_partitions
from integrity.defs.resources import DatabaseResource, SpecResource, StorageResource
from integrity.diff import FINDING_KINDS, DiffOptions, ReconciliationReport
from integrity.engine import EngineLimits
from integrity.inventory import DatabaseInventory, StorageInventory, check_database, read_database
from integrity.kinds import KINDS
from integrity.parquet_diff import diff_any_size
from integrity.reconcile import build_storage_inventory, read_inventory_report, tenant_scope
from integrity.settings import Settings
from integrity.spec import check_tenant

EXAMPLES_SHOWN = 20
_EXAMPLE_TEXT_LIMIT = 300
_DETAIL_LIMIT = 100
"""The UI's table cuts off columns on the right: the detail comes second and stays short."""
EXAMPLE_COLUMNS = ("kind", "detail", "key", "row_id")


class ReportConfig(dg.Config):
    """What counts as drift for one run (the CLI's --min-age, --stuck-after and --status)."""

    min_age: int = Field(
        default=int(KINDS.age("min_age").delta.total_seconds()),
        ge=0,
        description="Seconds: an upload or processing job younger than this may still be in flight, "
        "so it is never an orphan.",
    )
    stuck_after: int = Field(
        default=int(KINDS.age("stuck_after").delta.total_seconds()),
        ge=0,
        description="Seconds: a processing job processing for longer than this is stuck.",
    )
    status: str | None = Field(
        default=None,
        description="Only report findings whose row or processing job is in this status.",
    )


def partition_tenant(partition_key: str) -> str | None:
    """The tenant a partition reconciles (None: the whole bucket); a partition key that cannot
    be a tenant (one added by hand as 'org-acme/', say) fails the step with one line."""
    with fail_clearly():
        return tenant_scope(check_tenant(partition_key, "tenant partition"))


def _completeness(complete: bool, reasons: list[str]) -> dict[str, dg.MetadataValue]:
    return {
        "complete": dg.MetadataValue.bool(complete),
        "reasons": dg.MetadataValue.text("; ".join(reasons) if reasons else "none"),
    }


def _warn_if_incomplete(context: AssetExecutionContext, what: str, reasons: list[str]) -> None:
    if reasons:
        context.log.warning(
            f"{what} is incomplete; its report will be marked incomplete and never acted on: "
            + "; ".join(reasons)
        )


def _clip(value: object, limit: int = _EXAMPLE_TEXT_LIMIT) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def examples_table(
    report: ReconciliationReport, limit: int = EXAMPLES_SHOWN
) -> dg.TableMetadataValue:
    """A few findings of each kind for a person to look at; the full list is the snapshot."""
    schema = dg.TableSchema(columns=[dg.TableColumn(name, "string") for name in EXAMPLE_COLUMNS])
    records = [
        dg.TableRecord(
            {
                name: _clip(
                    example.get(name), _DETAIL_LIMIT if name == "detail" else _EXAMPLE_TEXT_LIMIT
                )
                for name in EXAMPLE_COLUMNS
            }
        )
        for example in report.examples(limit)
    ]
    return dg.MetadataValue.table(records=records, schema=schema)


NO_TENANT = "(none)"


def tenants_table(report: ReconciliationReport) -> dg.TableMetadataValue:
    """Findings per tenant, most first: on the whole-bucket report, where to look next."""
    findings = report.findings
    tenant = findings["tenant"].astype(object).where(findings["tenant"].notna(), NO_TENANT)
    rows = []
    for name, group in findings.groupby(tenant.astype(str), sort=False):
        counts = group["kind"].value_counts()
        kinds = ", ".join(f"{k} {int(counts[k])}" for k in FINDING_KINDS if k in counts.index)
        rows.append((int(len(group)), str(name), kinds))
    rows.sort(key=lambda r: (-r[0], r[1]))
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn("tenant", "string"),
            dg.TableColumn("findings", "int"),
            dg.TableColumn("kinds", "string"),
        ]
    )
    records = [dg.TableRecord({"tenant": t, "findings": n, "kinds": k}) for n, t, k in rows]
    return dg.MetadataValue.table(records=records, schema=schema)


@dg.asset(
    key=DB_INVENTORY_KEY,
    group_name=RECONCILIATION_GROUP,
    partitions_def=tenant_partitions,
    kinds={"sql", "parquet"},
    io_manager_key=SNAPSHOT_IO_MANAGER,
)
def db_inventory(
    context: AssetExecutionContext, database: DatabaseResource, spec: SpecResource
) -> DatabaseInventory:
    """The database side: every row the spec names for the tenant, streamed table by table to Parquet.

    Read first because a tenant's rows may reference objects outside the tenant's own prefixes,
    and the storage listing needs to know where.
    """
    tenant = partition_tenant(context.partition_key)
    with fail_clearly():
        reconciliation_spec = spec.load()
        with database.engine() as engine:
            check_database(engine, reconciliation_spec)
            inventory = read_database(engine, reconciliation_spec, tenant=tenant)
    context.log.info(f"read {inventory.rows} rows from {database.description}")
    _warn_if_incomplete(context, "the database inventory", inventory.errors)
    context.add_output_metadata(
        {
            "rows_read": dg.MetadataValue.int(inventory.rows),
            **{
                f"rows/{name}": dg.MetadataValue.int(rows)
                for name, rows in inventory.table_rows.items()
            },
            "seconds": dg.MetadataValue.float(round(inventory.seconds, 3)),
            **_completeness(inventory.complete, inventory.errors),
        }
    )
    return inventory


@dg.asset(
    key=STORAGE_INVENTORY_KEY,
    group_name=RECONCILIATION_GROUP,
    partitions_def=tenant_partitions,
    kinds={"s3", "parquet"},
    io_manager_key=SNAPSHOT_IO_MANAGER,
)
def storage_inventory(
    context: AssetExecutionContext,
    db_inventory: DatabaseInventory,
    storage: StorageResource,
    spec: SpecResource,
) -> StorageInventory:
    """The storage side: every object under the tenant's prefixes and the directories its rows point into.

    Listed in bulk (1,000 keys a page, prefixes concurrently) instead of one HEAD per row; a
    page that fails after its retries marks the inventory incomplete rather than short. With
    INTEGRITY_INVENTORY (or the spec's inventory_report) it is read from an S3 Inventory report
    instead: a snapshot as of the report's creation time, which its metadata states.
    """
    tenant = partition_tenant(context.partition_key)
    with fail_clearly():
        reconciliation_spec = spec.load()
        store = storage.get_store()
        store.check_access()
        report = storage.inventory_report(reconciliation_spec, store)
        if report is None:
            inventory = build_storage_inventory(store, db_inventory, reconciliation_spec, tenant)
        else:
            for reason in report.skipped:
                context.log.warning(f"newer inventory report skipped: {reason}")
            inventory = read_inventory_report(
                report, store, db_inventory, reconciliation_spec, tenant
            )
    verb = "listed" if report is None else f"read from {report.url}"
    context.log.info(
        f"{verb}: {inventory.count} objects of {store.description} with "
        f"{inventory.requests} requests"
        + ("" if report is None else f", as of {report.created_at.isoformat()}")
    )
    _warn_if_incomplete(context, "the storage inventory", inventory.errors)
    context.add_output_metadata(
        {
            "objects_listed": dg.MetadataValue.int(inventory.count),
            "requests": dg.MetadataValue.int(inventory.requests),
            "seconds": dg.MetadataValue.float(round(inventory.seconds, 3)),
            "prefixes": dg.MetadataValue.int(len(inventory.prefixes)),
            **_completeness(inventory.complete, inventory.errors),
            **storage_source_metadata(inventory.source, inventory.as_of, inventory.snapshot_at),
            **(
                {"skipped_reports": dg.MetadataValue.text("; ".join(report.skipped))}
                if report is not None and report.skipped
                else {}
            ),
        }
    )
    return inventory


def storage_source_metadata(
    source: str, as_of: datetime | None, snapshot_at: datetime | None
) -> dict[str, dg.MetadataValue]:
    """Where the storage side came from and as of when; for a snapshot, how old it is."""
    meta = {
        "storage_source": dg.MetadataValue.text(source),
        "storage_as_of": dg.MetadataValue.text(as_of.isoformat() if as_of else "unknown"),
    }
    if snapshot_at is not None:
        age = datetime.now(timezone.utc) - snapshot_at
        meta["snapshot_age_hours"] = dg.MetadataValue.float(round(age.total_seconds() / 3600, 3))
    return meta


@dg.asset(
    key=REPORT_KEY,
    group_name=RECONCILIATION_GROUP,
    partitions_def=tenant_partitions,
    kinds={"pandas", "parquet"},
    io_manager_key=SNAPSHOT_IO_MANAGER,
)
def reconciliation_report(
    context: AssetExecutionContext,
    config: ReportConfig,
    storage_inventory: StorageInventory,
    db_inventory: DatabaseInventory,
    spec: SpecResource,
) -> ReconciliationReport:
    """The drift between storage and database: every finding, by stable kind, from joins over both snapshots.

    The diff runs out of core over the two inventories' Parquet files, under the memory limit of
    INTEGRITY_MEMORY_LIMIT (spilling to disk past it); the spill's peak size is recorded.

    A report built from an incomplete inventory is still written, marked incomplete with the
    reasons, so people can see it while remediation refuses to act on it. The `__all__`
    partition's report (the whole bucket) has a `tenants` table: the findings per tenant.

    What a partition covers: `__all__` is every object and row. Any other partition is one
    value of the spec's tenant columns and covers the rows whose tenant column holds it (with
    the reference spec: documents and plans by organization_id, images by project_id), the
    uploads and plan tiles under its own prefixes, and the objects those rows reference. So an
    organization's partition does not cover its projects' images: look at their project
    partitions, or at `__all__`.
    """
    options = DiffOptions(
        min_age=timedelta(seconds=config.min_age),
        stuck_after=timedelta(seconds=config.stuck_after),
        tenant=partition_tenant(context.partition_key),
        status=config.status,
    )
    with fail_clearly():
        reconciliation_spec = spec.load()
        limits = EngineLimits.from_settings(Settings.from_env())
        started = time.perf_counter()
        report = diff_any_size(
            storage_inventory, db_inventory, reconciliation_spec, options, limits=limits
        )
    diff_seconds = time.perf_counter() - started
    report.timings["diff_seconds"] = diff_seconds
    report.timings["total_seconds"] = (
        storage_inventory.seconds + db_inventory.seconds + diff_seconds
    )

    counts = report.counts()
    context.log.info(
        f"{'complete' if report.complete else 'INCOMPLETE'} report for {report.scope}: "
        + ", ".join(f"{kind} {n}" for kind, n in counts.items())
    )
    _warn_if_incomplete(context, "the report", report.reasons)
    context.add_output_metadata(
        {
            **{f"findings/{kind}": dg.MetadataValue.int(counts[kind]) for kind in FINDING_KINDS},
            "findings/total": dg.MetadataValue.int(len(report.findings)),
            "objects_listed": dg.MetadataValue.int(report.objects_checked),
            "rows_read": dg.MetadataValue.int(report.rows_checked),
            "requests": dg.MetadataValue.int(storage_inventory.requests),
            "seconds": dg.MetadataValue.float(round(report.timings["total_seconds"], 3)),
            "diff_seconds": dg.MetadataValue.float(round(diff_seconds, 3)),
            "memory_limit_bytes": dg.MetadataValue.int(limits.memory_limit),
            "spill_peak_bytes": dg.MetadataValue.int(int(report.timings["spill_peak_bytes"])),
            **_completeness(report.complete, report.reasons),
            **storage_source_metadata(
                report.storage_source,
                report.storage_as_of,
                storage_inventory.snapshot_at,
            ),
            "examples": examples_table(report),
            **({"tenants": tenants_table(report)} if context.partition_key == ALL_TENANTS else {}),
        }
    )
    return report


reconciliation_assets = [db_inventory, storage_inventory, reconciliation_report]
