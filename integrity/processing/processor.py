"""Process one object: the state decides what to do, so any trigger (early, late, twice) is harmless.

An upload under the spec's uploads prefix becomes one Deep Zoom pyramid per page (a PDF) or one
(an image) under the plan layout; an object some images row names as its original gets a staged
JPEG. The processing_jobs row is claimed conditionally first, so concurrent runs for one key do
the work once; every failure ends as one line in that row and a ProcessingFailed.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from integrity.clock import naive_utcnow
from integrity.errors import IntegrityError
from integrity.processing import render, state
from integrity.processing.render import BadInput
from integrity.spec import ReconciliationSpec, template_regex
from integrity.storage.base import ObjectStore

log = logging.getLogger(__name__)

PROGRESS_DELAYS = (1.0, 2.0, 4.0)
"""Waits before the retries of a failed progress update: three retries, backing off."""

DZI_CONTENT_TYPE = "application/xml"
TILE_CONTENT_TYPE = "image/jpeg"


class ProcessingFailed(IntegrityError):
    """The object could not be processed; the message is what processing_jobs.error says."""


@dataclass(frozen=True)
class ProcessOptions:
    """How pages are rendered and how much the processor takes on."""

    dpi: float = 150.0
    max_object_bytes: int = 512 * 1024 * 1024
    max_pixels: int = 250_000_000
    max_pages: int = 500  # a construction plan set; a larger PDF is refused before any work
    staged_max_side: int = 1024
    upload_concurrency: int = 8
    stale_after: timedelta = timedelta(hours=24)
    default_project: str = "unassigned"

    def validate(self) -> ProcessOptions:
        checks = (
            ("dpi", 1 <= self.dpi <= 1200, "between 1 and 1200"),
            ("max_object_bytes", self.max_object_bytes >= 1, "at least 1"),
            ("max_pixels", self.max_pixels >= 1, "at least 1"),
            ("max_pages", self.max_pages >= 1, "at least 1"),
            ("staged_max_side", self.staged_max_side >= 16, "at least 16"),
            ("upload_concurrency", self.upload_concurrency >= 1, "at least 1"),
            ("stale_after", self.stale_after.total_seconds() > 0, "positive"),
            ("default_project", bool(self.default_project.strip()), "not empty"),
        )
        for name, ok, rule in checks:
            if not ok:
                raise IntegrityError(f"{name}: must be {rule}")
        return self


@dataclass
class ProcessResult:
    """What one run did. `outcome` is processed, already_processed, busy, gone or ignored."""

    key: str
    outcome: str
    reason: str = ""
    kind: str | None = None  # pdf or image
    plan_id: str | None = None
    project: str | None = None
    pages: int = 0
    sheets_written: int = 0
    sheets_skipped: int = 0
    tiles_written: int = 0
    objects_written: int = 0
    staged: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        if self.outcome != "processed":
            return f"{self.key}: {self.outcome.replace('_', ' ')}: {self.reason}"
        parts = [f"{self.key}: processed"]
        if self.plan_id:
            parts.append(
                f"plan {self.plan_id} ({self.project}): {self.pages} pages, "
                f"{self.sheets_written} sheets written, {self.sheets_skipped} already present, "
                f"{self.tiles_written} tiles"
            )
        if self.staged:
            parts.append(f"staged {', '.join(self.staged)}")
        return "; ".join(parts) + f" in {self.seconds:.2f}s"


def upload_tenant(spec: ReconciliationSpec, key: str) -> str | None:
    """The tenant of a key under the uploads prefix (`documents/{tenant}/...`), else None."""
    if spec.uploads is None:
        return None
    match = re.fullmatch(template_regex(spec.uploads.prefix, ".+"), key, re.DOTALL)
    return match.group("tenant") if match and not key.endswith("/") else None


def with_backoff(
    call: Callable[[], None],
    *,
    delays: tuple[float, ...] = PROGRESS_DELAYS,
    sleep: Callable[[float], None] = time.sleep,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = sa.exc.DBAPIError,
) -> None:
    """Call; on a retryable failure wait delays[0], retry, wait delays[1], ... then give up."""
    for attempt, delay in enumerate((*delays, None)):
        try:
            call()
            return
        except retry_on as exc:
            if delay is None:
                raise
            log.warning(
                "progress update failed (attempt %d), retrying in %gs: %s",
                attempt + 1,
                delay,
                state.one_line(str(getattr(exc, "orig", None) or exc))[:200],
            )
            sleep(delay)


def sheet_names(pages: int) -> list[str]:
    """page-001, page-002, ...: stable for a page count, sorted like the pages."""
    width = max(3, len(str(pages)))
    return [f"page-{n:0{width}d}" for n in range(1, pages + 1)]


@dataclass
class _Sheet:
    """A sheet rendered and on its way to storage."""

    name: str
    directory: Path
    files: int
    upload: Future[None]


class _Run:
    """One key's processing; holds what the steps share."""

    def __init__(
        self,
        key: str,
        store: ObjectStore,
        engine: sa.Engine,
        spec: ReconciliationSpec,
        options: ProcessOptions,
        sleep: Callable[[float], None],
        on_event: Callable[[str], None],
    ) -> None:
        self.key = key
        self.store = store
        self.engine = engine
        self.spec = spec
        self.options = options
        self.sleep = sleep
        self.say = on_event
        self.result = ProcessResult(key, "processed")
        self.claimed = False

    # -- the decision ------------------------------------------------------------

    def run(self) -> ProcessResult:
        spec, key = self.spec, self.key
        tenant = upload_tenant(spec, key)
        with self.engine.connect() as conn:
            processing_job = state.read_processing_job(conn, spec.jobs, key) if spec.jobs else None
            document = state.read_document_status(conn, spec, key) if tenant else None
            named = state.find_image_rows(conn, spec, key, self.store.bucket)
        images = [
            r
            for r in named
            if r.status not in r.table.table.skip_statuses
            and not (r.status == r.table.ready_status and r.staged)
        ]
        upload_done = document == state.DOCUMENT_COMPLETE and (
            processing_job is None or processing_job.status == state.COMPLETE
        )
        if tenant is None and not named:
            return self._done("ignored", "not under the uploads prefix and no images row names it")
        if (tenant is None or upload_done) and not images:
            done = (
                "documents row and processing job are complete"
                if tenant
                else "images rows are staged"
            )
            return self._done("already_processed", done)

        head = self.store.head(key)
        if head is None:
            if processing_job is None or processing_job.status == state.COMPLETE:
                return self._done(
                    "gone", "the object is not in storage and no processing job waits for it"
                )
            self._claim_or_busy()
            if not self.claimed:
                return self.result
            self._fail(f"object {key} not found in {self.store.description}")
        self._claim_or_busy()
        if not self.claimed:
            return self.result
        try:
            if tenant is not None and not upload_done:
                with self.engine.connect() as conn:
                    upload_done = state.read_document_status(conn, spec, key) == (
                        state.DOCUMENT_COMPLETE
                    )
                if upload_done and not images:  # another run finished between read and claim
                    state.finish_processing_job(self.engine, spec.jobs, key, naive_utcnow())
                    return self._done("already_processed", "another run completed it just now")
            if head.size > self.options.max_object_bytes:
                raise BadInput(
                    f"the object is {head.size:,} bytes, over the limit of "
                    f"{self.options.max_object_bytes:,} (max_object_bytes)"
                )
            data = self.store.get_bytes(key)
            with tempfile.TemporaryDirectory(prefix="integrity-process-") as workdir:
                self._process(data, tenant if not upload_done else None, images, Path(workdir))
        except Exception as exc:  # every failure ends in the job row as one line
            self._fail(_reason(exc))
        return self.result

    def _claim_or_busy(self) -> None:
        if self.claimed:
            return
        if self.spec.jobs is None:
            self.claimed = True
            return
        now = naive_utcnow()
        self.claimed = state.claim_processing_job(
            self.engine, self.spec.jobs, self.key, stale_after=self.options.stale_after, now=now
        )
        if not self.claimed:
            with self.engine.connect() as conn:
                current = state.read_processing_job(conn, self.spec.jobs, self.key)
            since = current.started_at if current and current.started_at else "?"
            status = current.status if current else "absent"
            self._done("busy", f"processing job is {status} (since {since}); another run holds it")

    def _done(self, outcome: str, reason: str) -> ProcessResult:
        self.result.outcome = outcome
        self.result.reason = reason
        return self.result

    def _fail(self, reason: str) -> None:
        line = state.one_line(reason)
        if self.spec.jobs is not None and self.claimed:
            try:
                state.fail_processing_job(self.engine, self.spec.jobs, self.key, line)
            except sa.exc.SQLAlchemyError as exc:
                line += f" (and the failure could not be recorded: {_reason(exc)})"
        raise ProcessingFailed(f"{self.key}: {line}")

    # -- the work ------------------------------------------------------------------

    def _process(
        self, data: bytes, tenant: str | None, images: list[state.ImageRow], workdir: Path
    ) -> None:
        options = self.options
        pdf: render.PdfDocument | None = None
        image: Any = None
        try:
            if not data:
                raise BadInput("the object is empty (0 bytes)")
            fmt = render.sniff(data)
            if fmt.kind == "pdf":
                self.result.kind = "pdf"
                pdf = render.open_pdf(
                    data,
                    dpi=options.dpi,
                    max_pixels=options.max_pixels,
                    max_pages=options.max_pages,
                )
                pages = pdf.pages
            elif fmt.kind == "image":
                self.result.kind = "image"
                image = render.load_image(data, fmt, max_pixels=options.max_pixels)
                pages = 1
            else:
                raise BadInput(
                    f"the object is {fmt.name}: not a PDF or an image format libvips can read"
                )
            del data
            if images:
                first = image if image is not None else pdf.render(0)  # type: ignore[union-attr]
                self._stage(first, images)
            if tenant is not None:
                plan = self._tile(tenant, pdf, image, pages, workdir)
                now = naive_utcnow()
                state.finish_upload(self.engine, self.spec, self.key, tenant, plan, pages, now)
            else:
                state.finish_processing_job(self.engine, self.spec.jobs, self.key, naive_utcnow())
        finally:
            if pdf is not None:
                pdf.close()

    def _stage(self, image: Any, rows: list[state.ImageRow]) -> None:
        jpeg, width, height = render.staged_jpeg(image, self.options.staged_max_side)
        staged_key = state.staged_key_for(self.key, self.options.staged_max_side)
        self.store.put_bytes(staged_key, jpeg, TILE_CONTENT_TYPE)
        self.result.objects_written += 1
        now = naive_utcnow()
        for row in rows:
            if state.set_staged(self.engine, row, staged_key, now):
                self.say(f"{row.table.name} {row.id}: staged {staged_key} ({width}x{height})")
        self.result.staged.append(staged_key)

    def _tile(
        self, tenant: str, pdf: render.PdfDocument | None, image: Any, pages: int, workdir: Path
    ) -> state.PlanRef | None:
        """Every sheet's pyramid under the plan layout; the plan it filled (None: no plans spec)."""
        plans = self.spec.plans
        if plans is None:
            return None
        with self.engine.connect() as conn:
            plan = state.find_plan(conn, plans, self.key, tenant, self.options.default_project)
        self.result.plan_id, self.result.project, self.result.pages = (
            plan.plan_id,
            plan.project,
            pages,
        )
        prefix = plans.sheets_prefix.format(tenant=tenant, project=plan.project, plan=plan.plan_id)
        names = sheet_names(pages)
        present = self._present_descriptors(prefix, names)
        state.start_plan(self.engine, plans, plan, pages, naive_utcnow())
        done = len(present)
        self.result.sheets_skipped = done
        if done:
            self._progress(plan, done)
        # Sheet n uploads while sheet n+1 renders (libvips and the network release the GIL);
        # at most one sheet waits, so at most two sheets' tiles are on disk at once.
        pending: _Sheet | None = None
        with (
            ThreadPoolExecutor(self.options.upload_concurrency) as tile_pool,
            ThreadPoolExecutor(1) as sheet_pool,
        ):
            try:
                for index, sheet in enumerate(names):
                    if sheet in present:
                        continue
                    page = image if pdf is None else pdf.render(index)
                    sheet_dir = workdir / sheet
                    sheet_dir.mkdir()
                    files = render.deep_zoom(page, sheet, sheet_dir)
                    del page
                    if pending is not None:
                        stored, pending = pending, None
                        done = self._sheet_stored(stored, plan, done, pages)
                    upload = sheet_pool.submit(
                        self._upload, f"{prefix}{sheet}/tiles/", files, tile_pool
                    )
                    pending = _Sheet(sheet, sheet_dir, len(files), upload)
                if pending is not None:
                    stored, pending = pending, None
                    self._sheet_stored(stored, plan, done, pages)
            except BaseException:
                # Rendering the next page failed: the sheet in flight still lands and counts,
                # so the plan's progress stays equal to the descriptors in storage.
                if pending is not None:
                    with contextlib.suppress(Exception):
                        self._sheet_stored(pending, plan, done, pages)
                raise
        return plan

    def _sheet_stored(self, sheet: _Sheet, plan: state.PlanRef, done: int, pages: int) -> int:
        """Wait for a sheet's upload (raising its error), then count it and record progress."""
        sheet.upload.result()
        shutil.rmtree(sheet.directory, ignore_errors=True)
        done += 1
        self.result.sheets_written += 1
        self.result.tiles_written += sheet.files - 1
        self.result.objects_written += sheet.files
        self._progress(plan, done)
        self.say(f"sheet {sheet.name}: {sheet.files - 1} tiles ({done} of {pages})")
        return done

    def _present_descriptors(self, prefix: str, names: list[str]) -> set[str]:
        """Sheets whose descriptor is already stored: one listing of the plan's prefix."""
        suffix = self.spec.plans.descriptor_suffix if self.spec.plans else ".dzi"
        wanted = {f"{prefix}{sheet}/tiles/{sheet}{suffix}": sheet for sheet in names}
        present = set()
        for page in self.store.list_pages(prefix):
            present.update(wanted[k] for k in page.keys if k in wanted)
        return present

    def _upload(self, prefix: str, files: list[tuple[str, Path]], pool: ThreadPoolExecutor) -> None:
        """Tiles in parallel, then the descriptor: a stored .dzi means every tile is there."""
        *tiles, (descriptor, descriptor_path) = files

        def put(item: tuple[str, Path]) -> None:
            rel, path = item
            self.store.put_bytes(prefix + rel, path.read_bytes(), TILE_CONTENT_TYPE)

        list(pool.map(put, tiles))
        self.store.put_bytes(prefix + descriptor, descriptor_path.read_bytes(), DZI_CONTENT_TYPE)

    def _progress(self, plan: state.PlanRef, completed: int) -> None:
        plans = self.spec.plans
        assert plans is not None
        with_backoff(
            lambda: state.record_progress(self.engine, plans, plan, completed), sleep=self.sleep
        )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, IntegrityError):
        return str(exc)
    if isinstance(exc, sa.exc.SQLAlchemyError):
        return "database error: " + str(getattr(exc, "orig", None) or exc).strip()
    return f"{type(exc).__name__}: {exc}"


def process_object(
    key: str,
    *,
    store: ObjectStore,
    engine: sa.Engine,
    spec: ReconciliationSpec,
    options: ProcessOptions | None = None,
    sleep: Callable[[float], None] = time.sleep,
    on_event: Callable[[str], None] = lambda message: None,
) -> ProcessResult:
    """Process one object key as its state requires; raise ProcessingFailed with the recorded line."""
    if not key or key.endswith("/"):
        raise IntegrityError(f"key: {key!r} is not an object key")
    started = time.perf_counter()
    run = _Run(key, store, engine, spec, (options or ProcessOptions()).validate(), sleep, on_event)
    result = run.run()
    result.seconds = time.perf_counter() - started
    return result
