"""Errors a user can act on: each carries one readable line naming what was wrong and where."""

from __future__ import annotations


class IntegrityError(Exception):
    """Base class: the message is one line meant for a person, with no secrets in it."""


class SpecError(IntegrityError):
    """The reconciliation spec is invalid; the message names the field."""


class StorageError(IntegrityError):
    """The bucket or storage directory cannot be read (missing, unreachable, denied)."""


class DatabaseError(IntegrityError):
    """The database cannot be reached or read."""


class UsageError(IntegrityError):
    """A bad flag or option value."""


class QueueError(IntegrityError):
    """The work queue cannot be reached or a message could not be sent."""


class RemediationRefused(IntegrityError):
    """Remediation will not write: an incomplete report, a tripped circuit breaker, no opt-in."""
