"""Tenant partitions: one dynamic partition per tenant, plus `__all__` for the whole bucket.

Tenants are discovered from the storage prefixes and the database (core `discover_tenants`),
by the discovery sensor and the daily schedule (integrity.defs.reconciliation.discovery), so a
backfill from the UI reconciles tenants independently. A leaf: the assets, checks, jobs and
sensors of every domain share this definition, and it imports none of them.
"""

from __future__ import annotations

import dagster as dg

from integrity.inventory import ALL_TENANTS

TENANTS = "tenants"

tenant_partitions = dg.DynamicPartitionsDefinition(name=TENANTS)

__all__ = ["ALL_TENANTS", "TENANTS", "tenant_partitions"]
