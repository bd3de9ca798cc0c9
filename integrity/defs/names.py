"""The names the Dagster layer is known by: asset keys, check names, groups, jobs, ops, IO
managers and run tags.

A leaf: every domain imports it and it imports none of them, so a sensor can name its target
job here by string instead of importing the module that defines the job (which is how the
domains stay free of import cycles). Changing a value here renames the thing in the UI, in run
history and in dagster.yaml's run queue limits; test_definitions.py pins them.
"""

from __future__ import annotations

import dagster as dg

# The core judges these checks, so it names them (re-exported here); the finding kinds' checks
# are named by their kind in integrity.kinds.KINDS (`kind.check`).
from integrity.checks import DB_INVENTORY_CHECK as DB_INVENTORY_CHECK
from integrity.checks import FRESHNESS_CHECK as FRESHNESS_CHECK
from integrity.checks import STORAGE_INVENTORY_CHECK as STORAGE_INVENTORY_CHECK

# --------------------------------------------------------------------------- groups

RECONCILIATION_GROUP = "reconciliation"
SHARDS_GROUP = "reconciliation_shards"

# --------------------------------------------------------------------------- assets

DB_INVENTORY_KEY = dg.AssetKey("db_inventory")
STORAGE_INVENTORY_KEY = dg.AssetKey("storage_inventory")
REPORT_KEY = dg.AssetKey("reconciliation_report")

SHARD_PLAN_KEY = dg.AssetKey("shard_plan")
SHARD_DB_INVENTORY_KEY = dg.AssetKey("shard_db_inventory")
SHARD_STORAGE_INVENTORY_KEY = dg.AssetKey("shard_storage_inventory")
SHARD_REPORT_KEY = dg.AssetKey("shard_report")
SHARDED_REPORT_KEY = dg.AssetKey("sharded_report")

# --------------------------------------------------------------------------- jobs and ops

RECONCILE_JOB = "reconcile"
FRESHNESS_JOB = "reconciliation_freshness"
REMEDIATE_JOB = "remediate"
ROLLBACK_JOB = "rollback"
PROCESS_JOB = "process_document"
SHARD_PLAN_JOB = "plan_shards"
SHARDS_JOB = "reconcile_shards"
SHARD_MERGE_JOB = "merge_shards"

# Run config is keyed by op name: a sensor that configures a run names the op here.
REMEDIATE_OP = "apply_remediation"
ROLLBACK_OP = "apply_rollback"
PROCESS_OP = "process_object"

# --------------------------------------------------------------------------- IO managers

SNAPSHOT_IO_MANAGER = "snapshot_io_manager"
SHARD_IO_MANAGER = "shard_io_manager"

# --------------------------------------------------------------------------- run tags

TRIGGER_TAG = "integrity/trigger"
"""What launched a run: the schedule's or sensor's name, or `requeue`."""
REMEDIATION_TAG = "integrity/remediation"
"""On remediate and rollback runs; dagster.yaml's run queue allows one such run at a time."""
SHARD_TAG = "integrity/shard"
"""On every shard run, so the run queue can cap how many shards run at once."""
AUTO_REMEDIATION_TAG = "integrity/auto_remediation"
"""`apply` or `dry_run`: what the auto-remediation policy decided for the run."""
AUTO_REMEDIATION_REASON_TAG = "integrity/auto_remediation_reason"
TENANT_TAG = "integrity/tenant"
REPORT_STORAGE_ID_TAG = "integrity/report_storage_id"
"""The event log storage id of the report materialization an auto-remediation run applies."""
PARTITION_TAG = "dagster/partition"
"""Dagster's own tag: the partition of a run."""
