"""Reconciliation: the inventory assets and their report, checks, tenant discovery, the daily
schedule, the reconcile job and the key-range shards."""
