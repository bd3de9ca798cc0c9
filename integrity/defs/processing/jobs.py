"""The processor: `process_document` turns one uploaded object into what the database expects.

Every trigger (the event sensors, the re-queue sensor, the launchpad) builds its run config with
`process_run_config(key, source)`. The op reads the state and decides: an object already
processed, gone, or held by another run is a success with a log line, so duplicated, late or
early triggers are harmless. A bad object fails the step with the one line its processing job
(the `processing_jobs` row) records.
"""

# No `from __future__ import annotations` here: Dagster 1.13 checks the `context` parameter's
# annotation as an object (see reconciliation/assets.py).

from datetime import timedelta
from typing import Any

import dagster as dg
import sqlalchemy as sa
from dagster import OpExecutionContext
from pydantic import Field

from integrity.defs.helpers import fail_clearly
from integrity.defs.names import PROCESS_JOB, PROCESS_OP
from integrity.defs.resources import DatabaseResource, SpecResource, StorageResource
from integrity.errors import IntegrityError
from integrity.inventory import db_error_reason
from integrity.processing import ProcessOptions, ProcessResult, process_object

_DEFAULTS = ProcessOptions()


def process_run_config(key: str, source: str, **options: Any) -> dict[str, Any]:
    """Run config for one object: every trigger (sensors, re-queue, UI) builds it here.

    `options` are other fields of ProcessConfig (dpi, max_pages, ...); the sensors pass none,
    so their runs use the defaults.
    """
    unknown = sorted(set(options) - set(ProcessConfig.model_fields))
    if unknown:
        raise IntegrityError(f"process_document config: unknown option {unknown[0]!r}")
    return {"ops": {PROCESS_OP: {"config": {"key": key, "source": source, **options}}}}


class ProcessConfig(dg.Config):
    """Which object, who asked, and (rarely changed) how pages are rendered."""

    key: str = Field(description="The object key to process (as stored, not a URL).")
    source: str = Field(
        default="manual",
        description="What triggered the run (a sensor name, 'requeue', 'manual'); logged only.",
    )
    dpi: float = Field(default=_DEFAULTS.dpi, description="Resolution PDF pages are rendered at.")
    max_object_mb: float = Field(
        default=_DEFAULTS.max_object_bytes / 2**20,
        description="Objects larger than this (MiB) fail as bad input instead of being read.",
    )
    max_megapixels: float = Field(
        default=_DEFAULTS.max_pixels / 1e6,
        description="A page or image larger than this fails as bad input (a decompression bomb).",
    )
    max_pages: int = Field(
        default=_DEFAULTS.max_pages,
        description="A PDF with more pages than this fails as bad input before any page is rendered.",
    )
    staged_max_side: int = Field(
        default=_DEFAULTS.staged_max_side,
        description="Longest side (px) of the staged JPEG written for images rows.",
    )
    upload_concurrency: int = Field(
        default=_DEFAULTS.upload_concurrency, description="Tile uploads in flight at once."
    )
    stale_after_hours: float = Field(
        default=_DEFAULTS.stale_after.total_seconds() / 3600,
        description="A processing job processing for longer than this is taken over (its worker "
        "died).",
    )
    default_project: str = Field(
        default=_DEFAULTS.default_project,
        description="Project of a new plan when no plans row names the upload's file stem.",
    )

    def options(self) -> ProcessOptions:
        return ProcessOptions(
            dpi=self.dpi,
            max_object_bytes=int(self.max_object_mb * 2**20),
            max_pixels=int(self.max_megapixels * 1e6),
            max_pages=self.max_pages,
            staged_max_side=self.staged_max_side,
            upload_concurrency=self.upload_concurrency,
            stale_after=timedelta(hours=self.stale_after_hours),
            default_project=self.default_project,
        ).validate()


def _metadata(result: ProcessResult) -> dict[str, Any]:
    values: dict[str, Any] = {
        "key": dg.MetadataValue.text(result.key),
        "outcome": dg.MetadataValue.text(result.outcome),
        "pages": dg.MetadataValue.int(result.pages),
        "sheets_written": dg.MetadataValue.int(result.sheets_written),
        "sheets_skipped": dg.MetadataValue.int(result.sheets_skipped),
        "tiles_written": dg.MetadataValue.int(result.tiles_written),
        "objects_written": dg.MetadataValue.int(result.objects_written),
        "seconds": dg.MetadataValue.float(round(result.seconds, 3)),
    }
    if result.plan_id:
        values["plan_id"] = dg.MetadataValue.text(result.plan_id)
        values["project"] = dg.MetadataValue.text(result.project or "")
    if result.staged:
        values["staged"] = dg.MetadataValue.text(", ".join(result.staged))
    return values


@dg.op(name=PROCESS_OP)
def process_object_op(
    context: OpExecutionContext,
    config: ProcessConfig,
    storage: StorageResource,
    database: DatabaseResource,
    spec: SpecResource,
) -> None:
    """Tile an upload (each PDF page or the image, as Deep Zoom) and stage images rows' originals.

    Decides from the rows and the bucket, not from the trigger: already processed, gone or held
    by another run is a success that does nothing.
    """
    with fail_clearly():
        options = config.options()
        reconciliation_spec = spec.load()
        store = storage.get_store()
        context.log.info(f"processing {config.key} (from {config.source}) in {store.description}")
        try:
            with database.engine() as engine:
                result = process_object(
                    config.key,
                    store=store,
                    engine=engine,
                    spec=reconciliation_spec,
                    options=options,
                    on_event=context.log.info,
                )
        except sa.exc.SQLAlchemyError as exc:
            raise dg.Failure(
                description=f"cannot use database {database.description}: {db_error_reason(exc)}"
            ) from None
    context.add_output_metadata(_metadata(result))
    context.log.info(result.summary())


@dg.job(name=PROCESS_JOB)
def process_document_job() -> None:
    """Turn one object into tiles, a staged image and complete rows, as its state requires."""
    process_object_op()
