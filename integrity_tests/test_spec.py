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
