"""Errors a user can act on: each carries one readable line naming what was wrong and where."""

from __future__ import annotations

import re

_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)?[^/?#]*@")


class IntegrityError(Exception):
    """Base class: the message is one line meant for a person, with no secrets in it."""


class SpecError(IntegrityError):
    """The reconciliation spec is invalid; the message names the field."""


class StorageError(IntegrityError):
    """The bucket or storage directory cannot be read (missing, unreachable, denied)."""


class InventoryError(StorageError):
    """An S3 Inventory report cannot be used: missing, incomplete, malformed, for another bucket,
    or a data file that does not match its manifest; the message names the file."""


class DatabaseError(IntegrityError):
    """The database cannot be reached or read."""


class UsageError(IntegrityError):
    """A bad flag or option value."""


class QueueError(IntegrityError):
    """The work queue cannot be reached or a message could not be sent."""


class RemediationRefused(IntegrityError):
    """Remediation will not write: an incomplete report, a tripped circuit breaker, no opt-in."""


def without_userinfo(url: str) -> str:
    """The text of a URL with anything before an '@' in its authority hidden, for a message."""
    return _USERINFO.sub(r"\1***@", url)


def shown(value: str, width: int = 100) -> str:
    """A value quoted for a message, cut to a readable length."""
    return repr(value if len(value) <= width else value[: width - 1] + "…")
