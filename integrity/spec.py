"""The reconciliation spec: which tables and columns reference which objects.

The spec is data, not code: users whose tables or columns are named differently from the
reference schema write a YAML (or JSON) file and change nothing else. It is validated when it
is loaded, and an error names the field that is wrong.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from integrity.errors import SpecError

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")

MISSING_KINDS = ("missing_original", "missing_staged")
DEFAULT_MESSAGES = {
    "missing_original": "original missing in storage",
    "missing_staged": "staged missing in storage",
}


def _identifier(value: str) -> str:
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        raise ValueError(
            f"{value!r} is not a plain SQL identifier (letters, digits, _; schema.table allowed)"
        )
    return value


def _template_fields(template: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name}
    except ValueError as exc:
        raise ValueError(f"{template!r} is not a valid template: {exc}") from None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReferenceSpec(_Model):
    """A column whose value names an object (a bare key or a URL)."""

    column: str
    kind: Literal["missing_original", "missing_staged"] = "missing_original"
    message: str | None = None
    when_status: list[str] | None = Field(
        default=None, description="Only rows in one of these statuses must have the object."
    )

    @field_validator("column")
    @classmethod
    def _column(cls, v: str) -> str:
        return _identifier(v)

    @property
    def error_message(self) -> str:
        return self.message or DEFAULT_MESSAGES[self.kind]


class TableSpec(_Model):
    """A table whose rows reference objects in storage."""

    table: str
    id: str = "id"
    tenant: str
    status: str = "status"
    updated_at: str = "updated_at"
    error: str | None = "error"
    error_status: str = "error"
    skip_statuses: list[str] = Field(default_factory=lambda: ["error"])
    references: list[ReferenceSpec] = Field(min_length=1)

    @field_validator("table", "id", "tenant", "status", "updated_at", "error")
    @classmethod
    def _identifiers(cls, v: str | None) -> str | None:
        return None if v is None else _identifier(v)


class UploadsSpec(_Model):
    """Where uploads land, and which table records that an upload was processed."""

    prefix: str = "documents/{tenant}/"
    processed_table: str = "documents"
    processed_column: str = "r2_key"

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        fields = _template_fields(v)
        if fields != {"tenant"} or not v.endswith("/") or not v.startswith(v.split("{", 1)[0]):
            raise ValueError(
                "must be a prefix template ending in '/' with exactly one field, {tenant}"
            )
        return v


class JobsSpec(_Model):
    """The processing-state table of uploaded objects."""

    table: str = "processing_jobs"
    key: str = "object_key"
    status: str = "status"
    attempts: str = "attempts"
    started_at: str = "started_at"
    updated_at: str = "updated_at"
    error: str = "error"
    requeue_statuses: list[str] = Field(default_factory=lambda: ["not_started", "failed"])
    processing_statuses: list[str] = Field(default_factory=lambda: ["processing"])
    not_started_status: str = Field(
        default="not_started", description="The status remediation resets a re-queued job to."
    )

    @field_validator("table", "key", "status", "attempts", "started_at", "updated_at", "error")
    @classmethod
    def _identifiers(cls, v: str) -> str:
        return _identifier(v)


class PlansSpec(_Model):
    """Tiling progress rows, reconciled against the descriptors found under each plan's prefix."""

    table: str = "plans"
    id: str = "plan_id"
    tenant: str = "organization_id"
    project: str = "project_id"
    status: str = "status"
    completed: str = "completed_pages"
    total: str = "total_pages"
    updated_at: str = "updated_at"
    completed_at: str | None = "completed_at"
    reconciled: str | None = "reconciled"
    reconciled_at: str | None = "reconciled_at"
    complete_status: str = Field(
        default="complete", description="The status of a plan whose every page is in storage."
    )
    skip_statuses: list[str] = Field(default_factory=lambda: ["error"])
    sheets_prefix: str = "organizations/{tenant}/projects/{project}/plans/{plan}/sheets/"
    descriptor_suffix: str = ".dzi"

    @field_validator(
        "table",
        "id",
        "tenant",
        "project",
        "status",
        "completed",
        "total",
        "updated_at",
        "completed_at",
        "reconciled",
        "reconciled_at",
    )
    @classmethod
    def _identifiers(cls, v: str | None) -> str | None:
        return None if v is None else _identifier(v)

    @field_validator("sheets_prefix")
    @classmethod
    def _sheets_prefix(cls, v: str) -> str:
        fields = _template_fields(v)
        if (
            not {"tenant", "plan"} <= fields
            or not fields <= {"tenant", "project", "plan"}
            or not v.endswith("/")
        ):
            raise ValueError(
                "must be a prefix template ending in '/' with the fields {tenant} and {plan} (and optionally {project})"
            )
        return v


class ReconciliationSpec(_Model):
    """Everything the reconciliation needs to know about a schema and an object layout."""

    version: Literal[1] = 1
    tables: dict[str, TableSpec]
    uploads: UploadsSpec | None = Field(default_factory=UploadsSpec)
    jobs: JobsSpec | None = Field(default_factory=JobsSpec)
    plans: PlansSpec | None = Field(default_factory=PlansSpec)

    @model_validator(mode="after")
    def _cross_references(self) -> ReconciliationSpec:
        if self.uploads is not None:
            table = self.tables.get(self.uploads.processed_table)
            if table is None:
                raise ValueError(
                    f"uploads.processed_table: {self.uploads.processed_table!r} is not one of tables "
                    f"({', '.join(sorted(self.tables)) or 'none'})"
                )
            if self.uploads.processed_column not in {r.column for r in table.references}:
                raise ValueError(
                    f"uploads.processed_column: {self.uploads.processed_column!r} is not a reference "
                    f"column of tables.{self.uploads.processed_table}"
                )
        return self

    @property
    def tenant_prefix_templates(self) -> list[str]:
        """Prefix templates, cut right after the tenant, that a tenant owns in storage."""
        templates = []
        if self.uploads is not None:
            templates.append(self.uploads.prefix)
        if self.plans is not None:
            head = self.plans.sheets_prefix.split("{tenant}", 1)[0]
            templates.append(head + "{tenant}/")
        return sorted(set(templates))

    def tenant_prefixes(self, tenant: str) -> list[str]:
        return [t.format(tenant=tenant) for t in self.tenant_prefix_templates]


def default_spec() -> ReconciliationSpec:
    """The spec of the reference schema (documents, processing_jobs, images, plans)."""
    return ReconciliationSpec(
        tables={
            "documents": TableSpec(
                table="documents",
                tenant="organization_id",
                references=[ReferenceSpec(column="r2_key", kind="missing_original")],
            ),
            "images": TableSpec(
                table="images",
                tenant="project_id",
                references=[
                    ReferenceSpec(column="original_url", kind="missing_original"),
                    ReferenceSpec(
                        column="staged_url", kind="missing_staged", when_status=["ready"]
                    ),
                ],
            ),
        }
    )


def _format_validation_error(source: str, exc: ValidationError) -> str:
    errors = exc.errors()
    # A misspelt field shows up twice (unknown here, missing there): name the misspelling first.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = (
        "unknown field"
        if first["type"] == "extra_forbidden"
        else first["msg"].removeprefix("Value error, ")
    )
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{source}: {where}: {message}{more}"


def parse_spec(data: object, source: str = "spec") -> ReconciliationSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the spec must be a mapping with a 'tables' entry")
    try:
        return ReconciliationSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_format_validation_error(source, exc)) from None


def load_spec(path: str | Path | None) -> ReconciliationSpec:
    """Load and validate a spec file (YAML or JSON); None gives the reference schema's spec."""
    if path is None:
        return default_spec()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec file ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{path}: not valid YAML or JSON{where}") from None
    return parse_spec(data, str(path))


def dump_spec(spec: ReconciliationSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json", exclude_none=False), sort_keys=False)
