"""`integrity demo`: it builds real data (valid PDFs, JPEGs, Deep Zoom pyramids), plants every
finding kind with known counts, and lands where `integrity reconcile` and `dagster dev` look."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from integrity import settings
from integrity.demo import BUCKET, EXPECTED_FINDINGS, MARKER, build_demo, demo_paths
from integrity.diff import ACTION_KINDS


def run_demo(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("INTEGRITY_", "AWS_ENDPOINT_URL"))
    }
    return subprocess.run(
        [sys.executable, "-m", "integrity.cli", "demo", "--home", str(home), *args],
        cwd=home.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo") / "home"


@pytest.fixture(scope="module")
def built(home: Path) -> subprocess.CompletedProcess[str]:
    return run_demo(home, "--json")


def storage(home: Path) -> Path:
    return demo_paths(home)[1]


@pytest.mark.e2e
def test_demo_reports_every_kind_with_the_planted_counts(
    built: subprocess.CompletedProcess[str],
) -> None:
    assert built.returncode == 0, built.stderr
    summary = json.loads(built.stdout)  # exactly one JSON object on stdout
    assert summary["complete"] is True
    assert summary["findings"] == EXPECTED_FINDINGS
    assert all(n > 0 for n in summary["findings"].values())
    assert "dagster dev" in built.stderr


@pytest.mark.e2e
def test_demo_plants_a_malformed_reference_reported_with_row_column_and_reason(
    built: subprocess.CompletedProcess[str], home: Path
) -> None:
    """The images row whose URL cannot be parsed is one invalid_reference (reported only), and
    the rest of the demo is reconciled as usual."""
    summary = json.loads(built.stdout)
    [example] = [e for e in summary["examples"] if e["kind"] == "invalid_reference"]
    assert example == {
        "kind": "invalid_reference",
        "key": None,
        "row_id": "img-107",
        "detail": "original_url is not a valid URL (Invalid IPv6 URL)",
    }
    # Reported only: what --apply would act on is the actionable kinds, and nothing for it.
    assert sum(summary["planned"].values()) == sum(
        n for kind, n in EXPECTED_FINDINGS.items() if kind in ACTION_KINDS
    )
    engine = sa.create_engine(f"sqlite:///{demo_paths(home)[0]}")
    with engine.connect() as conn:
        url = conn.execute(sa.text("SELECT original_url FROM images WHERE id = 'img-107'")).scalar()
    engine.dispose()
    assert url.startswith("http://[::1/")


@pytest.mark.e2e
def test_demo_summary_without_json(built: subprocess.CompletedProcess[str], home: Path) -> None:
    """--no-reset keeps the built demo and reconciles it again, printing the readable summary."""
    result = run_demo(home, "--no-reset")
    assert result.returncode == 0, result.stderr
    assert "demo kept (--no-reset)" in result.stdout
    for kind, n in EXPECTED_FINDINGS.items():
        assert re.search(rf"^\s+{kind}\s+{n}\s", result.stdout, re.M), kind
    # The closing hints name programs a fresh shell (no virtualenv activated) can run.
    fresh_path = os.pathsep.join(
        d
        for d in os.environ.get("PATH", "").split(os.pathsep)
        if Path(d) != Path(sys.executable).parent
    )
    programs = re.findall(
        r"`(?:[A-Z_]+=\S+ )*(\S*(?:dagster|integrity)) (?:dev|reconcile)", result.stdout
    )
    assert any(p.endswith("dagster") for p in programs), result.stdout
    assert any(p.endswith("integrity") for p in programs), result.stdout
    for program in programs:
        runnable = (home.parent / program).is_file() or shutil.which(program, path=fresh_path)
        assert runnable, f"{program!r} cannot be run from a fresh shell in {home.parent}"


def _dzi(path: Path) -> tuple[int, int, int, int]:
    text = path.read_text()
    get = {
        k: int(re.search(rf'{k}="(\d+)"', text).group(1))
        for k in ("Width", "Height", "TileSize", "Overlap")
    }
    return get["Width"], get["Height"], get["TileSize"], get["Overlap"]


@pytest.mark.e2e
def test_pyramids_match_their_deep_zoom_geometry(
    built: subprocess.CompletedProcess[str], home: Path
) -> None:
    """Levels run down to 1 px; each level has ceil(w/256) x ceil(h/256) tiles of the right size."""
    import pyvips

    descriptors = sorted(
        storage(home).glob("organizations/*/projects/*/plans/*/sheets/*/tiles/*.dzi")
    )
    assert len(descriptors) == 9
    for dzi in descriptors:
        sheet = dzi.parent.parent.name
        assert dzi.name == f"{sheet}.dzi"
        width, height, tile, overlap = _dzi(dzi)
        assert (tile, overlap) == (256, 1)
        top = math.ceil(math.log2(max(width, height)))
        files = dzi.parent / f"{sheet}_files"
        assert sorted(int(p.name) for p in files.iterdir()) == list(range(top + 1))
        for level in range(top + 1):
            scale = 2 ** (top - level)
            lw, lh = math.ceil(width / scale), math.ceil(height / scale)
            cols, rows = math.ceil(lw / tile), math.ceil(lh / tile)
            expected = {f"{c}_{r}.jpg" for c in range(cols) for r in range(rows)}
            assert {p.name for p in (files / str(level)).iterdir()} == expected, (dzi, level)
            if level == top:  # full resolution: tile sizes include the overlap on inner edges
                for c in range(cols):
                    for r in range(rows):
                        image = pyvips.Image.new_from_file(str(files / str(level) / f"{c}_{r}.jpg"))
                        w = min(tile, lw - c * tile) + (c > 0) * overlap + (c < cols - 1) * overlap
                        h = min(tile, lh - r * tile) + (r > 0) * overlap + (r < rows - 1) * overlap
                        assert (image.width, image.height) == (w, h)
        assert math.ceil(width / 2**top) == math.ceil(height / 2**top) == 1  # level 0 is one pixel


@pytest.mark.e2e
def test_plans_rows_and_descriptors(built: subprocess.CompletedProcess[str], home: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{demo_paths(home)[0]}")
    with engine.connect() as conn:
        plans = conn.execute(
            sa.text(
                "SELECT plan_id, organization_id, project_id, status, completed_pages, total_pages FROM plans"
            )
        ).all()
    engine.dispose()
    behind = []
    for plan, org, project, _status, completed, total in plans:
        prefix = (
            storage(home) / "organizations" / org / "projects" / project / "plans" / plan / "sheets"
        )
        tiled = len(list(prefix.glob("*/tiles/*.dzi")))
        assert tiled <= total
        if completed < tiled:
            behind.append(plan)
    assert behind == ["plan-depot-site"]


@pytest.mark.e2e
def test_uploads_are_valid_pdfs(built: subprocess.CompletedProcess[str], home: Path) -> None:
    pdfs = sorted(storage(home).glob("documents/**/*.pdf"))
    assert len(pdfs) >= 15
    for path in pdfs:
        data = path.read_bytes()
        assert data.startswith(b"%PDF-1.4") and data.rstrip().endswith(b"%%EOF")
        start = int(re.search(rb"startxref\n(\d+)\n", data).group(1))
        assert data[start:].startswith(b"xref\n")
        offsets = [int(m) for m in re.findall(rb"^(\d{10}) 00000 n ", data[start:], re.M)]
        for number, offset in enumerate(offsets, 1):
            assert data[offset:].startswith(b"%d 0 obj" % number), (path, number)
        count = int(re.search(rb"/Count (\d+)", data).group(1))
        assert data.count(b"/Type /Page ") == count >= 1


@pytest.mark.e2e
def test_images_use_every_url_form_and_are_real_jpegs(
    built: subprocess.CompletedProcess[str], home: Path
) -> None:
    import pyvips

    engine = sa.create_engine(f"sqlite:///{demo_paths(home)[0]}")
    with engine.connect() as conn:
        urls = [
            u
            for row in conn.execute(sa.text("SELECT original_url, staged_url FROM images"))
            for u in row
            if u
        ]
    engine.dispose()
    forms = {
        "bare": lambda u: u.startswith("organizations/") and "%" not in u,
        "s3": lambda u: u.startswith(f"s3://{BUCKET}/"),
        "path-style": lambda u: u.startswith(f"http://localhost:9000/{BUCKET}/"),
        "virtual-hosted": lambda u: u.startswith(f"https://{BUCKET}.s3.amazonaws.com/"),
        "percent-encoded": lambda u: "%20" in u,
        "foreign": lambda u: u.startswith("s3://") and not u.startswith(f"s3://{BUCKET}/"),
    }
    for name, matches in forms.items():
        assert any(matches(u) for u in urls), name
    jpegs = sorted(storage(home).glob("organizations/*/projects/*/images/*/*.jpg"))
    assert len(jpegs) >= 12
    image = pyvips.Image.new_from_file(str(jpegs[0]))
    assert (image.width, image.height, image.bands) == (1280, 960, 3)


@pytest.mark.e2e
def test_planted_ages(built: subprocess.CompletedProcess[str], home: Path) -> None:
    import time

    def age(key: str) -> float:
        return time.time() - (storage(home) / key).stat().st_mtime

    assert age("documents/org-initech/uploads/fresh-scan.pdf") < 3600
    assert age("documents/org-acme/invoices/invoice-0042.pdf") > 2 * 3600
    assert age("documents/org-acme/drawings/elevations.pdf") > 36 * 3600


@pytest.mark.e2e
def test_demo_materialises_every_partition_into_the_local_instance(
    built: subprocess.CompletedProcess[str], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dagster dev` on <home>/dagster opens on the reconciliation: every tenant partition's
    report and check results, `__all__` last (the asset overview shows the whole bucket)."""
    import dagster as dg

    from integrity.defs.names import REPORT_KEY
    from integrity.defs.partitions import TENANTS
    from integrity.kinds import KINDS

    assert built.returncode == 0, built.stderr
    dagster_home = home / "dagster"
    assert (dagster_home / "dagster.yaml").is_file()
    assert f"DAGSTER_HOME={dagster_home}" in built.stderr or "DAGSTER_HOME=$PWD/" in built.stderr
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    with dg.DagsterInstance.get() as instance:
        partitions = instance.get_dynamic_partitions(TENANTS)
        assert "__all__" in partitions and len(partitions) > 1
        assert set(instance.get_materialized_partitions(REPORT_KEY)) == set(partitions)
        latest = instance.get_latest_materialization_event(REPORT_KEY)
        assert latest is not None and latest.dagster_event is not None
        assert latest.dagster_event.partition == "__all__"
        meta = latest.asset_materialization.metadata
        assert meta["findings/total"].value == sum(EXPECTED_FINDINGS.values())
        tenants = meta["tenants"].value
        assert sum(r.data["findings"] for r in tenants.records) == sum(EXPECTED_FINDINGS.values())
        assert [c.name for c in meta["examples"].value.schema.columns][:2] == ["kind", "detail"]
        evaluations = {
            e.dagster_event.asset_check_evaluation_data.check_name: e.dagster_event.asset_check_evaluation_data
            for e in instance.all_logs(
                latest.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
            )
        }
        for kind in KINDS:
            evaluation = evaluations[kind.check]
            assert evaluation.metadata["count"].value == EXPECTED_FINDINGS[kind.name]
            if EXPECTED_FINDINGS[kind.name] == 0:
                assert evaluation.passed, kind.name
        assert any(not e.passed for e in evaluations.values())  # the planted drift is red
        # Every tenant partition was checked, not only the whole bucket.
        runs = instance.get_runs()
        assert {r.tags.get("dagster/partition") for r in runs} == set(partitions)
        assert all(r.is_success for r in runs)


@pytest.mark.e2e
def test_rebuild_resets_and_is_deterministic(
    built: subprocess.CompletedProcess[str], home: Path, tmp_path: Path
) -> None:
    """A second build in another home holds byte-identical objects; stale demo files are removed."""
    other = tmp_path / "home"
    stale = storage(other) / "documents" / "stale.pdf"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left over")
    (other / MARKER).write_text("{}")
    env = build_demo(other)
    assert env.built and not stale.exists()

    def digests(root: Path) -> dict[str, str]:
        return {
            p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*")
            if p.is_file()
        }

    assert digests(storage(other)) == digests(storage(home))


@pytest.mark.e2e
def test_refuses_to_reset_files_it_did_not_make(tmp_path: Path) -> None:
    precious = storage(tmp_path / "home") / "keep.txt"
    precious.parent.mkdir(parents=True)
    precious.write_text("mine")
    result = run_demo(tmp_path / "home")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "not made by 'integrity demo'" in result.stderr
    assert precious.read_text() == "mine"


def test_demo_lands_on_the_embedded_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What `dagster dev` and `integrity reconcile` read with only INTEGRITY_HOME set."""
    for name in (settings.ENV_DB_URL, settings.ENV_STORAGE_DIR, settings.ENV_BUCKET):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(settings.ENV_HOME, str(tmp_path))
    db_path, storage_dir = demo_paths(settings.home())
    assert settings.default_db_url() == f"sqlite:///{db_path}"
    assert settings.default_storage_dir() == storage_dir
    assert storage_dir.name == BUCKET
