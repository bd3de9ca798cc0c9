"""The reconciliation spec: which tables and columns reference which objects.

The spec is data, not code: users whose tables or columns are named differently from the
reference schema write a YAML (or JSON) file and change nothing else. It is validated when it
is loaded, and an error names the field that is wrong.
"""

from __future__ import annotations

import re
import string
from datetime import timedelta
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from integrity.durations import parse_duration
from integrity.errors import SpecError, UsageError
from integrity.kinds import KINDS, FindingKind, KindRegistry

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")

# The kinds a reference column may name as what its missing object means, and the error text a
# row is marked with unless the reference gives its own (integrity.kinds defines both).
MISSING_KINDS: tuple[str, ...] = KINDS.reference_kinds
DEFAULT_MESSAGES: dict[str, str] = {name: str(KINDS[name].error_message) for name in MISSING_KINDS}
MissingKind = Literal[MISSING_KINDS]  # type: ignore[valid-type]


def _identifier(value: str) -> str:
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        raise ValueError(
            f"{value!r} is not a plain SQL identifier (letters, digits, _; schema.table allowed)"
        )
    return value


def _template_fields(template: str) -> list[str]:
    """The fields of a prefix template, in order; only plain, distinct `{name}` fields pass.

    The template is both formatted (str.format) and matched (template_regex), so anything the
    two would read differently is refused: conversions ('{tenant!r}'), format specs
    ('{tenant:>10}'), positional fields ('{0}', '{}'), attributes and indexes ('{tenant.x}'),
    escaped braces, a field used twice, two fields with nothing between them, and key
    segments that are empty, '.' or '..'.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{template!r} is not a valid template ({exc})") from None
    fields: list[str] = []
    previous_literal = True
    for literal, name, format_spec, conversion in parsed:
        if "{" in literal or "}" in literal:
            raise ValueError(f"{template!r}: braces ('{{{{', '}}}}') are not allowed in a prefix")
        if literal:
            previous_literal = True
        if name is None:
            continue
        if not name or name.isdigit():
            raise ValueError(
                f"{template!r}: positional fields ('{{}}', '{{0}}') are not allowed; name the "
                "field, e.g. {tenant}"
            )
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"{template!r}: {{{name}}} is not a plain field name")
        if conversion is not None or format_spec or f"{{{name}}}" not in template:
            raise ValueError(
                f"{template!r}: conversions and format specs are not allowed; write {{{name}}}"
            )
        if name in fields:
            raise ValueError(f"{template!r}: {{{name}}} appears more than once")
        if not previous_literal:
            raise ValueError(
                f"{template!r}: {{{fields[-1]}}} and {{{name}}} need text between them"
            )
        fields.append(name)
        previous_literal = False
    segments = re.sub(r"\{[A-Za-z_][A-Za-z0-9_]*\}", "x", template).split("/")[:-1]
    if any(segment in ("", ".", "..") for segment in segments):
        raise ValueError(
            f"{template!r}: a key prefix has no leading '/', no '//' and no '.' or '..' segments"
        )
    return fields


def template_regex(template: str, tail: str = "") -> str:
    """A prefix template such as 'documents/{tenant}/' as a regex with named groups."""
    pattern = "^"
    for literal, name, _, _ in string.Formatter().parse(template):
        pattern += re.escape(literal)
        if name:
            pattern += f"(?P<{name}>[^/]+)"
    return pattern + tail


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReferenceSpec(_Model):
    """A column whose value names an object (a bare key or a URL)."""

    column: str
    kind: MissingKind = KINDS.for_reference("original").name
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


def _identity(value: object) -> str | list[str]:
    """A row identity: one column, or a list of columns that together pick out one row."""
    if isinstance(value, str):
        return _identifier(value)
    if not isinstance(value, (list, tuple)):
        raise ValueError(
            f"must be a column name or a list of column names (like [tenant_id, id]), not {value!r}"
        )
    if not value:
        raise ValueError("must name at least one column, not an empty list")
    columns = [_identifier(v) for v in value]
    repeated = next((c for i, c in enumerate(columns) if c in columns[:i]), None)
    if repeated is not None:
        raise ValueError(f"names {repeated!r} twice; each identity column once")
    return columns[0] if len(columns) == 1 else columns


class TableSpec(_Model):
    """A table whose rows reference objects in storage."""

    table: str
    id: str | list[str] = Field(
        default="id",
        description="The column that identifies a row, or the columns that do together "
        "(`[tenant_id, id]` when ids are unique only per tenant).",
    )
    tenant: str
    status: str = "status"
    updated_at: str = "updated_at"
    error: str | None = "error"
    error_status: str = "error"
    skip_statuses: list[str] = Field(default_factory=lambda: ["error"])
    references: list[ReferenceSpec] = Field(min_length=1)

    @field_validator("table", "tenant", "status", "updated_at", "error")
    @classmethod
    def _identifiers(cls, v: str | None) -> str | None:
        return None if v is None else _identifier(v)

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, v: object) -> str | list[str]:
        return _identity(v)

    @property
    def id_columns(self) -> tuple[str, ...]:
        """The identity columns, in the spec's order (one for a plain id)."""
        return (self.id,) if isinstance(self.id, str) else tuple(self.id)


class UploadsSpec(_Model):
    """Where uploads land, and which table records that an upload was processed."""

    prefix: str = "documents/{tenant}/"
    processed_table: str = "documents"
    processed_column: str = "r2_key"

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        fields = _template_fields(v)
        if fields != ["tenant"] or not v.endswith("/"):
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
        fields = set(_template_fields(v))
        if (
            not {"tenant", "plan"} <= fields
            or not fields <= {"tenant", "project", "plan"}
            or not v.endswith("/")
        ):
            raise ValueError(
                "must be a prefix template ending in '/' with the fields {tenant} and {plan} (and optionally {project})"
            )
        head, _, rest = v.partition("{tenant}")
        if "{" in head or not rest.startswith("/"):
            # A tenant's prefix is the template cut right after '{tenant}/' (tenant_prefixes).
            raise ValueError(f"{v!r}: {{tenant}} must be the first field and end a segment")
        return v

    @field_validator("descriptor_suffix")
    @classmethod
    def _descriptor_suffix(cls, v: str) -> str:
        if not v:
            raise ValueError("must not be empty (every key would count as a page): e.g. '.dzi'")
        return v


# --------------------------------------------------------------------------- checks and policy

_SHARE = re.compile(r"^(\d+(?:\.\d+)?)\s*%$")


def parse_share(value: object) -> float:
    """'50%' -> 0.5; anything else raises ValueError with a message for the field."""
    match = _SHARE.match(value.strip()) if isinstance(value, str) else None
    if match is None or float(match.group(1)) > 100:
        raise ValueError(f"must be a share between 0% and 100%, like '50%', not {value!r}")
    return float(match.group(1)) / 100


def _threshold(value: object) -> int | str | None:
    """A count (whole number, at least 0), a share ('1%'), or null for never."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    if isinstance(value, str) and _SHARE.match(value.strip()):
        parse_share(value)
        return value.strip().replace(" ", "")
    raise ValueError(
        f"must be a count (a whole number, at least 0), a share like '1%', or null, not {value!r}"
    )


class Limit(_Model):
    """A parsed threshold: exceeded by more than `count` findings or more than `share` of the checked."""

    count: int | None = None
    share: float | None = None

    def exceeded(self, count: int, ratio: float) -> bool:
        if self.count is not None:
            return count > self.count
        return self.share is not None and ratio > self.share


class KindThresholds(_Model):
    """When one finding kind's check warns and when it fails with ERROR severity.

    Each is the most that passes: a count of findings (0 means any finding) or a share of what
    the kind is judged against ('1%'); null means never.
    """

    warn_above: int | str | None = 0
    error_above: int | str | None = "1%"

    @field_validator("warn_above", "error_above", mode="before")
    @classmethod
    def _limits(cls, v: object) -> int | str | None:
        return _threshold(v)

    @staticmethod
    def _limit(value: int | str | None) -> Limit:
        if value is None:
            return Limit()
        if isinstance(value, int):
            return Limit(count=value)
        return Limit(share=parse_share(value))

    @property
    def warn(self) -> Limit:
        return self._limit(self.warn_above)

    @property
    def error(self) -> Limit:
        return self._limit(self.error_above)


def kind_thresholds(kind: FindingKind) -> KindThresholds:
    """A kind's default thresholds, as its definition gives them."""
    return KindThresholds(warn_above=kind.warn_above, error_above=kind.error_above)


class _FindingChecksBase(_Model):
    @model_validator(mode="before")
    @classmethod
    def _kind_defaults(cls, data: object) -> object:
        """A threshold left out of a kind's entry keeps that kind's default (orphan_object:
        {warn_above: 20} keeps error_above 5%), not KindThresholds' generic one."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, value in data.items():
            field = cls.model_fields.get(name) if isinstance(name, str) else None
            if field is not None and isinstance(value, dict):
                default = field.get_default(call_default_factory=True)
                if isinstance(default, KindThresholds):
                    out[name] = {**default.model_dump(), **value}
        return out

    def for_kind(self, kind: str | FindingKind) -> KindThresholds:
        """The thresholds of a kind; a kind this model has no field for (a registry other than
        the project's, given as an argument) is judged by its definition's defaults."""
        if isinstance(kind, FindingKind):
            value = getattr(self, kind.name, None)
            return value if isinstance(value, KindThresholds) else kind_thresholds(kind)
        return getattr(self, kind)


def finding_checks_model(registry: KindRegistry = KINDS) -> type[_FindingChecksBase]:
    """The `checks.findings` model of a registry: a field per kind, so a typo is an error."""
    fields: dict[str, object] = {
        kind.name: (
            KindThresholds,
            Field(default=kind_thresholds(kind), description=kind.description),
        )
        for kind in registry
    }
    return create_model(  # type: ignore[call-overload,no-any-return]
        "FindingChecks",
        __base__=_FindingChecksBase,
        __module__=__name__,
        __doc__="Thresholds per finding kind, one asset check each (a field per kind, so a "
        "typo is an error); the defaults are the kinds' (integrity.kinds).",
        **fields,
    )


FindingChecks = finding_checks_model()


class InventoryChecks(_Model):
    """Inventory sanity: an empty or suddenly much smaller inventory means the wrong bucket,
    endpoint, credentials or database far more often than real data loss."""

    max_shrink: str = Field(
        default="50%",
        description="The largest drop since the previous materialization that passes.",
    )
    allow_empty: bool = False

    @field_validator("max_shrink", mode="before")
    @classmethod
    def _share(cls, v: object) -> str:
        parse_share(v)
        return str(v).strip().replace(" ", "")

    @property
    def max_shrink_share(self) -> float:
        return parse_share(self.max_shrink)


class FreshnessCheckSpec(_Model):
    """How old the last reconciliation may be before `reconciliation_fresh` fails."""

    max_age: str = Field(default="26h", description="A duration: 26h, 1d2h, 90m or seconds.")

    @field_validator("max_age", mode="before")
    @classmethod
    def _duration(cls, v: object) -> str:
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise ValueError(f"must be a duration like '26h', not {v!r}")
        try:
            delta = parse_duration(str(v), option="max_age")
        except UsageError as exc:
            raise ValueError(str(exc).removeprefix("max_age: ")) from None
        if delta.total_seconds() <= 0:
            raise ValueError(f"must be longer than zero, not {v!r}")
        return str(v)

    @property
    def max_age_delta(self) -> timedelta:
        return parse_duration(self.max_age)


class InventoryReportSpec(_Model):
    """An S3 Inventory report as the storage side instead of a listing: the newest complete
    report under a destination, or one manifest.json (the CLI's --inventory and
    INTEGRITY_INVENTORY win over `source`, --inventory-max-age and INTEGRITY_INVENTORY_MAX_AGE
    over `max_age`)."""

    source: str | None = Field(
        default=None,
        description="s3://dest/prefix/source-bucket/config-id/, a manifest.json (s3:// or a "
        "path), or a local directory laid out like a destination; unset means a listing.",
    )
    max_age: str = Field(
        default="48h",
        description="The oldest report that may drive writes (a duration: 48h, 2d, 90m).",
    )

    @field_validator("source", mode="before")
    @classmethod
    def _source(cls, v: object) -> str | None:
        if v is None:
            return None
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"must be an s3:// URL or a path, not {v!r}")
        value = v.strip()
        if value.startswith("s3://"):
            if not re.fullmatch(r"[A-Za-z0-9.\-_]{1,255}", value[5:].split("/", 1)[0]):
                raise ValueError(f"{value!r} names no bucket (s3://BUCKET/prefix/...)")
        elif "://" in value:
            raise ValueError(f"{value!r} is neither an s3:// URL nor a local path")
        return value

    @field_validator("max_age", mode="before")
    @classmethod
    def _max_age(cls, v: object) -> str:
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise ValueError(f"must be a duration like '48h', not {v!r}")
        try:
            parse_duration(str(v), option="max_age")
        except UsageError as exc:
            raise ValueError(str(exc).removeprefix("max_age: ")) from None
        return str(v)

    @property
    def max_age_delta(self) -> timedelta:
        return parse_duration(self.max_age)


class ChecksSpec(_Model):
    """The asset checks' thresholds; every field has a default, so the section is optional."""

    findings: FindingChecks = Field(default_factory=FindingChecks)
    inventory: InventoryChecks = Field(default_factory=InventoryChecks)
    freshness: FreshnessCheckSpec = Field(default_factory=FreshnessCheckSpec)


ActionKind = Literal[KINDS.action_kinds]  # type: ignore[valid-type]


class PolicySpec(_Model):
    """What the auto-remediation sensor may apply without a person; nothing by default (dry runs)."""

    auto_remediate: list[ActionKind] = Field(
        default_factory=list,
        description="Finding kinds applied automatically when every kind present is listed here.",
    )
    max_change_ratio: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="The circuit breaker's share for automatic runs (see remediate).",
    )


class ReconciliationSpec(_Model):
    """Everything the reconciliation needs to know about a schema and an object layout."""

    version: Literal[1] = 1
    tables: dict[str, TableSpec]
    uploads: UploadsSpec | None = Field(default_factory=UploadsSpec)
    jobs: JobsSpec | None = Field(default_factory=JobsSpec)
    plans: PlansSpec | None = Field(default_factory=PlansSpec)
    checks: ChecksSpec = Field(default_factory=ChecksSpec)
    policy: PolicySpec = Field(default_factory=PolicySpec)
    inventory_report: InventoryReportSpec = Field(default_factory=InventoryReportSpec)

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
            generated = [c for c in table.id_columns if c != table.tenant]
            if len(table.id_columns) > 1 and len(generated) != 1:
                # The processor creates the row of a processed upload: the tenant is known, and
                # one id column gets a generated id; any other column it could not fill.
                raise ValueError(
                    f"tables.{self.uploads.processed_table}.id: a composite id of "
                    "uploads.processed_table must be its tenant column "
                    f"({table.tenant!r}) and one other column, because the processor creates "
                    f"its rows and can fill only those, not {list(table.id_columns)}"
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


_TENANT_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def tenant_problem(tenant: str) -> str | None:
    """Why a value cannot be a tenant, or None. A tenant fills {tenant} in the prefix templates
    (documents/{tenant}/), so it is one path segment: not empty, no '/', not '.' or '..', no
    control character. Otherwise a prefix would reach past the tenant's own, or out of a
    storage directory."""
    if tenant == "":
        return "is empty (leave it out to reconcile every tenant)"
    if "/" in tenant:
        return (
            f"{tenant[:100]!r} holds a '/': a tenant is one segment of the storage prefixes "
            "(as in documents/{tenant}/)"
        )
    if tenant in (".", ".."):
        return f"{tenant!r} is not a tenant: '.' and '..' name directories"
    match = _TENANT_CONTROL.search(tenant)
    if match is not None:
        return f"{tenant[:100]!r} holds the control character U+{ord(match.group()):04X}"
    return None


def check_tenant(tenant: str | None, field: str = "--tenant") -> str | None:
    """The tenant as given (None passes: every tenant), or UsageError naming `field`."""
    if tenant is None:
        return tenant
    problem = tenant_problem(tenant)
    if problem is not None:
        raise UsageError(f"{field}: {problem}")
    return tenant


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


# A spec is a few levels deep; the limit stops a hostile or broken file while it is composed,
# long before the parser's or the validator's recursion could run out of stack.
MAX_SPEC_DEPTH = 32


class _TooDeep(yaml.MarkedYAMLError):
    pass


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader with a nesting limit and no silently repeated keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        if self._depth >= MAX_SPEC_DEPTH:
            raise _TooDeep(problem="too deep", problem_mark=self.peek_event().start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)  # type: ignore[misc]
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        problem=f"the key {key_node.value!r} appears twice in one mapping",
                        problem_mark=key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_spec(path: str | Path | None) -> ReconciliationSpec:
    """Load and validate a spec file (YAML or JSON); None gives the reference schema's spec."""
    if path is None:
        return default_spec()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec file ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: the spec file is not UTF-8 text") from None
    try:
        data = yaml.load(text, Loader=_SpecLoader)  # noqa: S506 (a SafeLoader)
    except _TooDeep as exc:
        raise SpecError(
            f"{path}: nested more than {MAX_SPEC_DEPTH} levels deep at line "
            f"{exc.problem_mark.line + 1} (a spec needs a handful)"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        raise SpecError(
            f"{path}: not valid YAML or JSON{where}" + (f": {problem}" if problem else "")
        ) from None
    return parse_spec(data, str(path))


def dump_spec(spec: ReconciliationSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json", exclude_none=False), sort_keys=False)
