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
