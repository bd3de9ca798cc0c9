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


def _table_with_id(id: object) -> dict[str, object]:
    """A spec whose one table, the uploads' processed table, has this id."""
    return {
        "tables": {
            "docs": {
                "table": "tenant_documents",
                "id": id,
                "tenant": "tenant_id",
                "references": [{"column": "file_key"}],
            }
        },
        "uploads": {"processed_table": "docs", "processed_column": "file_key"},
    }


def test_a_table_id_may_be_several_columns_and_one_stays_one(tmp_path) -> None:
    spec = parse_spec(_table_with_id(["tenant_id", "id"]))
    assert spec.tables["docs"].id == ["tenant_id", "id"]
    assert spec.tables["docs"].id_columns == ("tenant_id", "id")
    path = tmp_path / "spec.yaml"
    path.write_text(dump_spec(spec))
    assert load_spec(path) == spec
    assert parse_spec(_table_with_id("id")).tables["docs"].id_columns == ("id",)
    assert parse_spec(_table_with_id(["id"])) == parse_spec(_table_with_id("id"))
    assert default_spec().tables["documents"].id_columns == ("id",)


@pytest.mark.parametrize(
    ("id", "message"),
    [
        ([], r"tables\.docs\.id: must name at least one column, not an empty list$"),
        (["tenant_id", "id; drop"], r"tables\.docs\.id: 'id; drop' is not a plain SQL identifier"),
        (["tenant_id", 7], r"tables\.docs\.id: 7 is not a plain SQL identifier"),
        (
            ["id", "tenant_id", "id"],
            r"tables\.docs\.id: names 'id' twice; each identity column once$",
        ),
        ({"tenant_id": "id"}, r"tables\.docs\.id: must be a column name or a list of column names"),
        (None, r"tables\.docs\.id: must be a column name or a list of column names"),
        (
            ["region", "id"],
            r"tables\.docs\.id: a composite id of uploads\.processed_table must be its tenant "
            r"column \('tenant_id'\) and one other column",
        ),
        (
            ["tenant_id", "region", "id"],
            r"tables\.docs\.id: a composite id of uploads\.processed_table",
        ),
    ],
)
def test_bad_table_ids_are_one_line_naming_the_field(id: object, message: str) -> None:
    with pytest.raises(SpecError, match=message) as refused:
        parse_spec(_table_with_id(id), "spec.yaml")
    assert "\n" not in str(refused.value)
    assert str(refused.value).startswith("spec.yaml: ")


def test_a_composite_id_needs_no_tenant_column_where_nothing_creates_rows() -> None:
    data = _table_with_id(["region", "id"])
    data["uploads"] = None
    assert parse_spec(data).tables["docs"].id_columns == ("region", "id")


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
