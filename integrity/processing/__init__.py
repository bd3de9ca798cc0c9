"""The processor: uploads into Deep Zoom tile pyramids and images into staged JPEGs (pyvips).

Pure core, no Dagster: integrity.defs.processing.jobs wraps `process_object` in the
`process_document` job.
"""

from integrity.processing.processor import (
    PROGRESS_DELAYS,
    ProcessingFailed,
    ProcessOptions,
    ProcessResult,
    process_object,
    sheet_names,
    upload_tenant,
    with_backoff,
)
from integrity.processing.render import BadInput, DziGeometry, expected_tiles, parse_dzi

__all__ = [
    "PROGRESS_DELAYS",
    "BadInput",
    "DziGeometry",
    "ProcessOptions",
    "ProcessResult",
    "ProcessingFailed",
    "expected_tiles",
    "parse_dzi",
    "process_object",
    "sheet_names",
    "upload_tenant",
    "with_backoff",
]
