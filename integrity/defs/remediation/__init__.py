"""Remediation: the remediate and rollback jobs, and the auto-remediation sensor."""
