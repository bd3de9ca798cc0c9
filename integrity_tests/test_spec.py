from __future__ import annotations

import pytest

from integrity.errors import SpecError
from integrity.spec import default_spec, dump_spec, load_spec, parse_spec


def test_default_spec_describes_the_reference_schema() -> None:
    spec = default_spec()
    assert sorted(spec.tables) == ["documents", "images"]
    images = spec.tables["images"]
    assert [(r.column, r.kind, r.when_status) for r in images.references] == [
        ("original_url", "missing_original", None),
        ("staged_url", "missing_staged", ["ready"]),
    ]
    assert spec.tenant_prefixes("org-1") == ["documents/org-1/", "organizations/org-1/"]


def test_dumped_spec_loads_back_identical(tmp_path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(dump_spec(default_spec()))
    assert load_spec(path) == default_spec()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {
                "tables": {
                    "images": {
                        "table": "images",
                        "tenant": "p",
                        "references": [{"column": "u", "kind": "lost"}],
                    }
                }
            },
            r"tables\.images\.references\.0\.kind",
        ),
        (
            {"tables": {"images": {"table": "images", "tenant": "p", "refs": []}}},
            r"tables\.images\.refs: unknown field \(and 1 more\)",
        ),
        (
            {
                "tables": {
                    "images": {
                        "table": "images; drop table x",
                        "tenant": "p",
                        "references": [{"column": "u"}],
                    }
                }
            },
            r"tables\.images\.table: 'images; drop table x' is not a plain SQL identifier",
        ),
        (
            {
                "tables": {
                    "images": {"table": "images", "tenant": "p", "references": [{"column": "u"}]}
                }
            },
            r"uploads\.processed_table: 'documents' is not one of tables \(images\)",
        ),
        (
            {
                "tables": {
                    "documents": {
                        "table": "documents",
                        "tenant": "o",
                        "references": [{"column": "k"}],
                    }
                }
            },
            r"uploads\.processed_column: 'r2_key' is not a reference column of tables\.documents",
        ),
        (
            {"tables": {}, "uploads": None, "plans": {"sheets_prefix": "orgs/{tenant}/sheets/"}},
            r"plans\.sheets_prefix: must be a prefix template",
        ),
        (
            {"tables": {}, "uploads": {"prefix": "documents/"}},
            r"uploads\.prefix: must be a prefix template",
        ),
        (
            {"tables": {}, "uploads": {"prefix": "documents/{tenant}/{tenant}/"}},
            r"uploads\.prefix: 'documents/\{tenant\}/\{tenant\}/': \{tenant\} appears more than once",
        ),
        (
            {"tables": {}, "uploads": {"prefix": "documents/{tenant!r}/"}},
            r"uploads\.prefix: .*conversions and format specs are not allowed; write \{tenant\}",
        ),
        (
            {"tables": {}, "uploads": None, "plans": {"sheets_prefix": "p/{plan}/o/{tenant}/"}},
            r"plans\.sheets_prefix: .*\{tenant\} must be the first field",
        ),
        (
            {"tables": {}, "uploads": None, "checks": {"freshness": {"max_age": "99999999999d"}}},
            r"checks\.freshness\.max_age: '99999999999d' is too long \(at most 36500d\)",
        ),
        ({"tables": {}, "uploads": None, "version": 2}, r"version"),
        (["not", "a", "mapping"], r"must be a mapping"),
    ],
)
def test_invalid_specs_name_the_bad_field(data: object, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec(data, "spec.yaml")


def test_unreadable_and_malformed_files_are_one_line(tmp_path) -> None:
    with pytest.raises(SpecError, match="cannot read the spec file"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tables: {images: [unclosed\n")
    with pytest.raises(SpecError, match=r"not valid YAML or JSON at line \d"):
        load_spec(bad)


@pytest.mark.parametrize(
    ("prefix", "sheets_prefix"),
    [
        ("uploads/t-{tenant}/", "orgs/{tenant}/plans/{plan}/sheets/"),
        ("{tenant}/", "orgs/x-{tenant}/p/{project}/{plan}-tiles/"),
    ],
)
def test_plain_templates_still_pass(prefix: str, sheets_prefix: str) -> None:
    spec = parse_spec(
        {"tables": {}, "uploads": None, "plans": {"sheets_prefix": sheets_prefix}}, "spec.yaml"
    )
    assert spec.plans is not None and spec.plans.sheets_prefix == sheets_prefix
    data = {
        "tables": {"documents": default_spec().tables["documents"].model_dump()},
        "uploads": {"prefix": prefix},
    }
    assert prefix.format(tenant="org-1") in parse_spec(data, "spec.yaml").tenant_prefixes("org-1")


def test_deep_repeated_and_undecodable_files_are_one_line(tmp_path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("tables: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(SpecError, match=r"deep\.yaml: nested more than 32 levels deep at line 1"):
        load_spec(deep)
    twice = tmp_path / "twice.yaml"
    twice.write_text("tables: {}\nuploads: null\ntables: {}\n")
    with pytest.raises(SpecError, match=r"at line 3: the key 'tables' appears twice"):
        load_spec(twice)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"tables: {}\n# caf\xe9\n")
    with pytest.raises(SpecError, match="not UTF-8 text"):
        load_spec(latin)


def test_merge_keys_may_override_what_they_merge(tmp_path) -> None:
    """A key given again next to a YAML merge ('<<') overrides on purpose: not a repeated key."""
    path = tmp_path / "spec.yaml"
    path.write_text(
        "tables:\n"
        "  documents: &doc {table: documents, tenant: organization_id, references: [{column: r2_key}]}\n"
        "  images: {<<: *doc, table: images, tenant: project_id}\n",
        encoding="utf-8",
    )
    images = load_spec(path).tables["images"]
    assert (images.table, images.tenant, images.references[0].column) == (
        "images",
        "project_id",
        "r2_key",
    )
