"""A local demo environment: SQLite, a storage directory, realistic data and planted drift.

`integrity demo` builds it and `dagster dev` then shows the same files, because both use the
embedded defaults under the integrity home. Ids and image contents are fixed, so two builds
differ only in timestamps, which are set relative to now (the faults depend on age).
Planted: every finding kind, plus look-alikes that must not be findings (a fresh upload, rows
already in status error, a job processing for one hour, a plan still tiling).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa

from integrity import schema, settings
from integrity.errors import UsageError
from integrity.kinds import KINDS
from integrity.storage.local import LocalStorage

BUCKET = settings.DEMO_BUCKET
MARKER = "demo.json"
TILE_SIZE = 256
TILE_OVERLAP = 1
SEED = 20240501

ORGANIZATIONS: dict[str, list[str]] = {
    "org-acme": ["prj-acme-tower", "prj-acme-bridge"],
    "org-globex": ["prj-globex-depot", "prj-globex-campus"],
    "org-initech": ["prj-initech-lab", "prj-initech-annex"],
}

# What the demo plants per finding kind (see _plant); a kind it does not plant is expected 0
# times, so a new kind needs no change here.
_PLANTED: dict[str, int] = {
    "orphan_object": 3,
    "stuck_job": 1,
    "missing_original": 2,
    "missing_staged": 1,
    "progress_behind": 1,
    "foreign_reference": 1,
    "normalization_mismatch": 1,
    "invalid_reference": 1,
}
# What the reconciliation of a fresh demo finds with the default options (min-age 1h, 24h),
# every kind in the order of reports.
EXPECTED_FINDINGS: dict[str, int] = {kind: _PLANTED.get(kind, 0) for kind in KINDS.names}
# Per organization (the tenant of documents, jobs and plans; images belong to projects).
EXPECTED_BY_TENANT: dict[str, dict[str, int]] = {
    "org-acme": {"orphan_object": 1, "stuck_job": 1},
    "org-globex": {"orphan_object": 1, "missing_original": 1, "progress_behind": 1},
    "org-initech": {"orphan_object": 1},
}


@dataclass
class DemoEnvironment:
    """Where the demo lives and what was written."""

    home: Path
    db_path: Path
    storage_dir: Path
    built: bool
    objects: int = 0
    rows: int = 0
    planted: dict[str, int] = field(default_factory=lambda: dict(EXPECTED_FINDINGS))

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.db_path}"


def demo_paths(home: Path) -> tuple[Path, Path]:
    """The demo's SQLite file and storage directory: the embedded defaults for that home."""
    return home / "demo.sqlite", home / "storage" / BUCKET


# --------------------------------------------------------------------------- file contents


def _pdf_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def minimal_pdf(title: str, pages: list[str]) -> bytes:
    """A small valid PDF (one text page per entry, a border on each) with a correct xref."""
    kids = [4 + 2 * i for i in range(len(pages))]
    bodies = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{' '.join(f'{k} 0 R' for k in kids)}] /Count {len(pages)} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, text in enumerate(pages):
        content = (
            f"0.5 w 36 36 540 720 re S BT /F1 20 Tf 72 720 Td ({_pdf_text(title)}) Tj "
            f"0 -32 Td /F1 12 Tf ({_pdf_text(text)}) Tj 0 -18 Td (Page {i + 1} of {len(pages)}) Tj ET"
        ).encode("latin-1", "replace")
        bodies.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>".encode()
        )
        bodies.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(bodies, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(bodies) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(bodies) + 1,
        xref,
    )
    return bytes(out)


def _photo(width: int, height: int, rng: random.Random) -> Any:
    """A deterministic 'site photo': a sky gradient over ground, with a building block."""
    import pyvips

    xyz = pyvips.Image.xyz(width, height)
    x, y = xyz[0], xyz[1]
    horizon = int(height * rng.uniform(0.45, 0.65))
    sky = [rng.randint(90, 140), rng.randint(150, 190), 235]
    ground = [rng.randint(90, 130), rng.randint(90, 120), rng.randint(60, 80)]
    shade = (y * (80 / height)).cast("uchar")
    left, right = sorted(rng.sample(range(width // 8, width - width // 8), 2))
    top = int(horizon * rng.uniform(0.2, 0.6))
    building = (x > left) & (x < right) & (y > top) & (y < horizon)
    windows = building & ((x - left) % 24 < 10) & ((y - top) % 30 < 14)
    image = (y < horizon).ifthenelse(sky, ground)
    image = (image - shade.bandjoin([shade, shade])).cast("uchar")
    image = building.ifthenelse([rng.randint(150, 200)] * 3, image)
    return windows.ifthenelse([60, 70, 90], image).cast("uchar")


def _sheet(width: int, height: int, rng: random.Random) -> Any:
    """A deterministic 'plan sheet': a drafting grid, walls, and a title block."""
    import pyvips

    xyz = pyvips.Image.xyz(width, height)
    x, y = xyz[0], xyz[1]
    grid = ((x % 50) < 1) | ((y % 50) < 1)
    title = (x > width - 320) & (y > height - 120)
    image = grid.ifthenelse([200, 215, 235], [252, 252, 248])
    image = title.ifthenelse([230, 230, 225], image).cast("uchar")
    rooms = []
    for _ in range(12):
        x0, y0 = rng.randrange(40, width - 200), rng.randrange(40, height - 200)
        rooms.append(
            (
                x0,
                y0,
                min(rng.randrange(80, 400), width - x0 - 8),
                min(rng.randrange(80, 300), height - y0 - 8),
            )
        )

    for x0, y0, w, h in rooms:
        for inset in range(4):  # walls four pixels thick
            image = image.draw_rect(
                [30, 40, 70], x0 + inset, y0 + inset, w - 2 * inset, h - 2 * inset
            )
    return image


def _pyramid(image: Any, sheet: str, workdir: Path) -> dict[str, bytes]:
    """A Deep Zoom pyramid made by pyvips: {relative path: bytes} for the .dzi and every tile."""
    image = image.copy_memory()  # render once; dzsave reads each region several times
    image.dzsave(
        str(workdir / sheet),
        tile_size=TILE_SIZE,
        overlap=TILE_OVERLAP,
        suffix=".jpg[Q=80]",
        depth="onepixel",
    )
    files = {f"{sheet}.dzi": (workdir / f"{sheet}.dzi").read_bytes()}
    for path in sorted((workdir / f"{sheet}_files").rglob("*.jpg")):
        files[path.relative_to(workdir).as_posix()] = path.read_bytes()
    return files


# --------------------------------------------------------------------------- the builder


class _Builder:
    """Writes objects and rows, keeping the counts; times are relative to one `now`."""

    def __init__(self, storage: LocalStorage, engine: sa.Engine, now: datetime) -> None:
        self.storage = storage
        self.engine = engine
        self.now = now
        self.rng = random.Random(SEED)
        self.rows: dict[str, list[dict[str, Any]]] = {
            "documents": [],
            "processing_jobs": [],
            "images": [],
            "plans": [],
        }
        self.objects = 0
        self.workdir = Path(tempfile.mkdtemp(prefix="integrity-demo-"))

    def ago(self, **delta: float) -> datetime:
        """A naive UTC timestamp, as the reference schema stores them."""
        return (self.now - timedelta(**delta)).replace(tzinfo=None)

    def put(self, key: str, data: bytes, age: timedelta | None = None) -> None:
        self.storage.put_bytes(key, data)
        self.objects += 1
        if age is not None:
            stamp = (self.now - age).timestamp()
            os.utime(self.storage.root.joinpath(*key.split("/")), (stamp, stamp))

    # -- documents and jobs ---------------------------------------------------

    def upload(
        self,
        org: str,
        name: str,
        pages: int,
        age: timedelta,
        *,
        document: str | None = None,
        job: str | None = None,
        job_age: timedelta | None = None,
        attempts: int = 1,
        error: str | None = None,
        stored: bool = True,
    ) -> str:
        """One upload: the object, its processing job and (if processed) its documents row."""
        key = f"documents/{org}/{name}"
        title = Path(name).stem.replace("-", " ").title()
        if stored:
            self.put(key, minimal_pdf(title, [f"{org} - {title}"] * pages), age)
        job_age = job_age if job_age is not None else age
        if job is not None:
            self.rows["processing_jobs"].append(
                {
                    "object_key": key,
                    "status": job,
                    "attempts": attempts if job != "not_started" else 0,
                    "started_at": None
                    if job == "not_started"
                    else self.ago(seconds=job_age.total_seconds()),
                    "updated_at": self.ago(seconds=job_age.total_seconds()),
                    "error": error if job == "failed" else None,
                }
            )
        if document is not None:
            status = "error" if error and job != "failed" else "complete"
            self.rows["documents"].append(
                {
                    "id": document,
                    "organization_id": org,
                    "r2_key": key,
                    "status": status,
                    "error": error if status == "error" else None,
                    "created_at": self.ago(seconds=age.total_seconds()),
                    "updated_at": self.ago(seconds=age.total_seconds() - 60),
                }
            )
        return key

    # -- images -------------------------------------------------------------

    def image(
        self,
        org: str,
        project: str,
        image_id: str,
        filename: str,
        *,
        status: str,
        form: str,
        store_original: bool = True,
        store_staged: bool = True,
        staged: bool = True,
        error: str | None = None,
    ) -> None:
        """One images row with real JPEGs; `form` is how its URLs are spelt."""
        base = f"organizations/{org}/projects/{project}/images/{image_id}"
        original = f"{base}/{filename}"
        staged_key = f"{base}/staged/{Path(filename).stem}-1024.jpg"
        photo = _photo(1280, 960, self.rng).copy_memory()
        if store_original:
            self.put(original, photo.jpegsave_buffer(Q=85), timedelta(days=3))
        if staged and store_staged:
            self.put(staged_key, photo.resize(0.8).jpegsave_buffer(Q=80), timedelta(days=3))
        self.rows["images"].append(
            {
                "id": image_id,
                "project_id": project,
                "status": status,
                "original_url": url_form(original, form),
                "staged_url": url_form(staged_key, form) if staged else None,
                "error": error,
                "updated_at": self.ago(days=2),
            }
        )

    # -- plans --------------------------------------------------------------

    def plan(
        self,
        org: str,
        project: str,
        plan_id: str,
        *,
        status: str,
        total: int,
        completed: int,
        tiled: int,
    ) -> None:
        """A plan PDF upload, its row, and `tiled` sheets as real Deep Zoom pyramids."""
        sheets = [f"A-{101 + i}" for i in range(total)]
        pdf_key = f"documents/{org}/plans/{plan_id}.pdf"
        self.put(
            pdf_key,
            minimal_pdf(f"Plan {plan_id}", [f"Sheet {s}" for s in sheets]),
            timedelta(days=5),
        )
        self.rows["documents"].append(
            {
                "id": f"doc-{plan_id}",
                "organization_id": org,
                "r2_key": pdf_key,
                "status": "complete",
                "error": None,
                "created_at": self.ago(days=5),
                "updated_at": self.ago(days=5),
            }
        )
        self.rows["processing_jobs"].append(
            {
                "object_key": pdf_key,
                "status": "complete",
                "attempts": 1,
                "started_at": self.ago(days=5),
                "updated_at": self.ago(days=5),
                "error": None,
            }
        )
        prefix = f"organizations/{org}/projects/{project}/plans/{plan_id}/sheets"
        for sheet in sheets[:tiled]:
            width, height = self.rng.choice([(1700, 1100), (1400, 1000), (1100, 850)])
            workdir = self.workdir / plan_id / sheet
            workdir.mkdir(parents=True)
            for rel, data in _pyramid(_sheet(width, height, self.rng), sheet, workdir).items():
                self.put(f"{prefix}/{sheet}/tiles/{rel}", data)
        self.rows["plans"].append(
            {
                "plan_id": plan_id,
                "organization_id": org,
                "project_id": project,
                "status": status,
                "completed_pages": completed,
                "total_pages": total,
                "started_at": self.ago(days=5),
                "updated_at": self.ago(days=4),
                "completed_at": self.ago(days=4) if status == "complete" else None,
                "reconciled": False,
                "reconciled_at": None,
            }
        )

    def save_rows(self) -> int:
        with self.engine.begin() as conn:
            for name, rows in self.rows.items():
                if rows:
                    conn.execute(schema.metadata.tables[name].insert(), rows)
        return sum(len(r) for r in self.rows.values())

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def url_form(key: str, form: str) -> str:
    """Spell a key the way applications store it: every form names the same object."""
    if form == "bare":
        return key
    if form == "s3":
        return f"s3://{BUCKET}/{key}"
    if form == "path":
        return f"http://localhost:9000/{BUCKET}/{key}"
    if form == "virtual":
        return f"https://{BUCKET}.s3.amazonaws.com/{key}"
    if form == "encoded":  # a bare key, percent-encoded
        return quote(key, safe="/")
    if form == "virtual-encoded":
        return f"https://{BUCKET}.s3.amazonaws.com/{quote(key, safe='/')}"
    raise ValueError(f"unknown URL form {form!r}")


def _plant(b: _Builder) -> None:
    """Everything the demo holds; comments mark planted faults and the look-alikes."""
    day = timedelta(days=1)
    # Healthy uploads: every organization has processed documents with complete jobs.
    for n, org in enumerate(ORGANIZATIONS):
        short = org.removeprefix("org-")
        b.upload(
            org,
            "contracts/master-agreement.pdf",
            2,
            (10 + n) * day,
            document=f"doc-{short}-msa",
            job="complete",
        )
        b.upload(
            org,
            "reports/site-report-2024-03.pdf",
            3,
            (7 + n) * day,
            document=f"doc-{short}-rpt",
            job="complete",
        )
        b.upload(
            org,
            "specs/division-09 finishes.pdf",
            2,
            (6 + n) * day,
            document=f"doc-{short}-spec",
            job="complete",
        )

    # orphan_object x3: no documents row and a job that is absent, not_started or failed.
    b.upload("org-acme", "invoices/invoice-0042.pdf", 1, timedelta(hours=3))
    b.upload(
        "org-globex", "permits/permit-application.pdf", 2, timedelta(hours=5), job="not_started"
    )
    b.upload(
        "org-initech",
        "specs/hvac-spec.pdf",
        4,
        timedelta(hours=4),
        job="failed",
        attempts=3,
        error="worker crashed: out of memory",
    )
    # stuck_job x1: processing, started two days ago.
    b.upload("org-acme", "drawings/elevations.pdf", 3, 2 * day, job="processing")
    # missing_original (documents): the row says complete, the object is gone.
    b.upload(
        "org-globex",
        "contracts/lost-addendum.pdf",
        1,
        9 * day,
        document="doc-globex-addendum",
        job="complete",
        stored=False,
    )
    # Look-alikes, not findings: a fresh upload (younger than min-age), a job processing for
    # one hour (not yet stuck), a complete job awaiting its row, a row already in error.
    b.upload("org-initech", "uploads/fresh-scan.pdf", 1, timedelta(minutes=5))
    b.upload("org-globex", "drawings/sections.pdf", 2, timedelta(hours=1), job="processing")
    b.upload(
        "org-acme",
        "contracts/corrupt-scan.pdf",
        1,
        4 * day,
        document="doc-acme-corrupt",
        job="complete",
        error="unreadable PDF",
        stored=False,
    )

    # Images, in every URL form. Faults: missing_original, missing_staged, foreign_reference,
    # normalization_mismatch. Look-alike: an image in status error whose original is gone.
    forms = ["bare", "s3", "path", "virtual", "encoded", "virtual-encoded"]
    n = 0
    for org, projects in ORGANIZATIONS.items():
        for project in projects:
            for name in ("north elevation.jpg", "site-photo-01.jpg"):
                n += 1
                b.image(
                    org, project, f"img-{n:03d}", name, status="ready", form=forms[n % len(forms)]
                )
    b.image(
        "org-acme",
        "prj-acme-tower",
        "img-101",
        "crane-lift.jpg",
        status="ready",
        form="s3",
        store_staged=False,
    )
    b.image(
        "org-initech",
        "prj-initech-lab",
        "img-102",
        "lab-bench.jpg",
        status="processing",
        form="path",
        staged=False,
        store_original=False,
    )
    b.image(
        "org-acme",
        "prj-acme-bridge",
        "img-103",
        "pier 4.jpg",
        status="queued",
        form="encoded",
        staged=False,
    )
    b.image(
        "org-globex",
        "prj-globex-depot",
        "img-104",
        "loading-dock.jpg",
        status="error",
        form="virtual",
        store_original=False,
        error="original missing in storage",
    )
    b.rows["images"].append(
        {
            "id": "img-105",
            "project_id": "prj-globex-campus",
            "status": "ready",
            "original_url": "s3://legacy-uploads/globex/campus/aerial.jpg",
            "staged_url": None,
            "error": None,
            "updated_at": b.ago(days=30),
        }
    )
    # The object was stored with a decomposed (NFD) name; the row spells it composed (NFC).
    nfc = "organizations/org-initech/projects/prj-initech-annex/images/img-106/Café façade.jpg"
    b.put(unicodedata.normalize("NFD", nfc), _photo(800, 600, b.rng).jpegsave_buffer(Q=85), 3 * day)
    b.rows["images"].append(
        {
            "id": "img-106",
            "project_id": "prj-initech-annex",
            "status": "queued",
            "original_url": unicodedata.normalize("NFC", nfc),
            "staged_url": None,
            "error": None,
            "updated_at": b.ago(days=3),
        }
    )

    # invalid_reference: a URL pasted with its IPv6 host cut short; no object can match it.
    b.rows["images"].append(
        {
            "id": "img-107",
            "project_id": "prj-globex-campus",
            "status": "ready",
            "original_url": f"http://[::1/{BUCKET}/organizations/org-globex/projects/"
            "prj-globex-campus/images/img-107/gate.jpg",
            "staged_url": None,
            "error": None,
            "updated_at": b.ago(days=1),
        }
    )

    # Plans: tiled sheets as Deep Zoom pyramids. Fault: progress_behind (3 sheets tiled, row
    # says 1). Look-alikes: a plan still tiling (1 of 3, honest) and a failed plan.
    b.plan(
        "org-acme",
        "prj-acme-tower",
        "plan-tower-l1",
        status="complete",
        total=2,
        completed=2,
        tiled=2,
    )
    b.plan(
        "org-acme",
        "prj-acme-bridge",
        "plan-bridge-deck",
        status="complete",
        total=1,
        completed=1,
        tiled=1,
    )
    b.plan(
        "org-globex",
        "prj-globex-depot",
        "plan-depot-site",
        status="processing",
        total=3,
        completed=1,
        tiled=3,
    )
    b.plan(
        "org-globex",
        "prj-globex-campus",
        "plan-campus-b2",
        status="complete",
        total=2,
        completed=2,
        tiled=2,
    )
    b.plan(
        "org-initech",
        "prj-initech-lab",
        "plan-lab-mep",
        status="processing",
        total=3,
        completed=1,
        tiled=1,
    )
    b.plan(
        "org-initech",
        "prj-initech-annex",
        "plan-annex-roof",
        status="failed",
        total=2,
        completed=0,
        tiled=0,
    )


# --------------------------------------------------------------------------- entry point


def _reset(home: Path, db_path: Path, storage_dir: Path) -> None:
    """Remove a previous demo, refusing to touch files the demo did not make."""
    marker = home / MARKER
    if (db_path.exists() or storage_dir.exists()) and not marker.exists():
        raise UsageError(
            f"{home} holds a database or storage directory not made by 'integrity demo'; "
            "choose another --home or remove them"
        )
    if db_path.exists():
        db_path.unlink()
    if storage_dir.exists():
        shutil.rmtree(storage_dir)
    marker.unlink(missing_ok=True)


def build_demo(home: str | Path | None = None, *, reset: bool = True) -> DemoEnvironment:
    """Build the demo under home (default: settings.home()); keep an existing one if not reset."""
    home = Path(home).expanduser().absolute() if home else settings.home()
    db_path, storage_dir = demo_paths(home)
    marker = home / MARKER
    if not reset and marker.exists() and db_path.exists() and storage_dir.is_dir():
        meta = json.loads(marker.read_text())
        return DemoEnvironment(
            home, db_path, storage_dir, built=False, objects=meta["objects"], rows=meta["rows"]
        )
    _reset(home, db_path, storage_dir)
    storage_dir.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(f"sqlite:///{db_path}")
    builder = _Builder(LocalStorage(storage_dir, bucket=BUCKET), engine, datetime.now(timezone.utc))
    try:
        schema.create_reference_schema(engine)
        _plant(builder)
        rows = builder.save_rows()
    finally:
        builder.close()
        engine.dispose()
    meta = {
        "bucket": BUCKET,
        "objects": builder.objects,
        "rows": rows,
        "built_at": builder.now.isoformat(),
    }
    marker.write_text(json.dumps(meta, indent=2))
    return DemoEnvironment(
        home, db_path, storage_dir, built=True, objects=builder.objects, rows=rows
    )
