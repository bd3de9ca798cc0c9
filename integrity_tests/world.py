"""A small world of rows and objects for tests: the reference schema plus a store, on any backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from integrity import schema
from integrity.diff import DiffOptions, ReconciliationReport
from integrity.reconcile import reconcile
from integrity.spec import ReconciliationSpec, default_spec
from integrity.storage.base import ListingFailed, ObjectStore
from integrity.storage.local import LocalStorage

HOUR = timedelta(hours=1)


def _naive(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(tzinfo=None)


@dataclass
class World:
    """Rows are written at once; objects are stored now. Reconcile `age` later to age them."""

    engine: sa.Engine
    store: ObjectStore
    spec: ReconciliationSpec = field(default_factory=default_spec)
    base: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    def obj(self, key: str, data: bytes = b"x") -> str:
        self.store.put_bytes(key, data)
        return key

    def _insert(self, table: sa.Table, **values: object) -> None:
        with self.engine.begin() as conn:
            conn.execute(table.insert().values(**values))

    def document(self, id: str, key: str, org: str = "org-1", status: str = "complete") -> None:
        at = _naive(self.base)
        self._insert(
            schema.documents,
            id=id,
            organization_id=org,
            r2_key=key,
            status=status,
            created_at=at,
            updated_at=at,
        )

    def job(
        self,
        key: str,
        status: str,
        *,
        started_ago: timedelta | None = None,
        updated_ago: timedelta = 2 * HOUR,
    ) -> None:
        self._insert(
            schema.processing_jobs,
            object_key=key,
            status=status,
            started_at=None if started_ago is None else _naive(self.base - started_ago),
            updated_at=_naive(self.base - updated_ago),
        )

    def image(
        self,
        id: str,
        original: str,
        staged: str | None = None,
        *,
        project: str = "proj-1",
        status: str = "ready",
    ) -> None:
        self._insert(
            schema.images,
            id=id,
            project_id=project,
            status=status,
            original_url=original,
            staged_url=staged,
            updated_at=_naive(self.base),
        )

    def plan(
        self,
        id: str,
        completed: int,
        total: int,
        *,
        org: str = "org-1",
        project: str = "proj-1",
        status: str = "processing",
    ) -> None:
        self._insert(
            schema.plans,
            plan_id=id,
            organization_id=org,
            project_id=project,
            status=status,
            completed_pages=completed,
            total_pages=total,
            updated_at=_naive(self.base),
        )

    def sheet(self, plan: str, sheet: str, *, org: str = "org-1", project: str = "proj-1") -> str:
        base = f"organizations/{org}/projects/{project}/plans/{plan}/sheets/{sheet}/tiles/"
        self.obj(base + f"{sheet}_files/0/0_0.jpg")
        return self.obj(base + f"{sheet}.dzi", b"<Image/>")

    def reconcile(self, age: timedelta = 2 * HOUR, **options: object) -> ReconciliationReport:
        return reconcile(
            self.store, self.engine, self.spec, DiffOptions(now=self.base + age, **options)
        )


def kinds(report: ReconciliationReport) -> dict[str, int]:
    return {k: v for k, v in report.counts().items() if v}


def found(report: ReconciliationReport, kind: str) -> list[tuple[str | None, str | None]]:
    """(row_id, key) of every finding of a kind, sorted."""
    rows = report.findings.loc[report.findings["kind"] == kind]
    return sorted(zip(rows["row_id"], rows["key"]), key=str)


class FailingListings(LocalStorage):
    """A storage directory whose listings under `organizations/` fail as after their retries."""

    failing_prefix = "organizations/"

    def list_pages(
        self, prefix: str = "", delimiter: str | None = None, *, start_after: str | None = None
    ):
        if prefix.startswith(self.failing_prefix):
            raise ListingFailed(f"listing {prefix} failed after 5 attempts: SlowDown (HTTP 503)")
        yield from super().list_pages(prefix, delimiter, start_after=start_after)
