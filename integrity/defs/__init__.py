"""The Dagster layer over the pure core, one package per domain; integrity.definitions
assembles them into the code location.

- reconciliation/: the inventory assets and their report, the asset checks (and the freshness
  sensor), tenant discovery, the daily schedule, the reconcile job, the key-range shards;
- remediation/: the remediate and rollback jobs, the auto-remediation sensor;
- processing/: the process_document job and the sensors that trigger it;
- alerts/: the alerts resource and the check and run-failure alert sensors.

Leaves every domain imports: names (asset keys, check, job and op names, tags), partitions,
intervals, io_managers, helpers and resources. This file imports nothing, so importing one
domain never loads the others.
"""
