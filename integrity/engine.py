"""The out-of-core engine's connection: DuckDB under a memory limit, spilling to a directory of
its own, with the peak size of the spill measured.

A leaf below both inventories and the diff: the Parquet diff (integrity.parquet_diff) runs its
joins here, and merging two storage inventories (integrity.inventory.objects.merge_storage)
uses the same connection, so neither imports the other.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb

from integrity import settings
from integrity.errors import UsageError

DEFAULT_MEMORY_SHARE = 0.25
"""The engine's memory limit when INTEGRITY_MEMORY_LIMIT is unset: this share of the machine's
memory (or of the container's limit, where one is set)."""
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
}


# --------------------------------------------------------------------------- limits


def machine_memory() -> int:
    """Bytes of memory this process may use: the machine's, or the container's if lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total


def parse_memory_limit(text: str, *, where: str = settings.ENV_MEMORY_LIMIT) -> int:
    """Bytes from "2GB", "512MiB", "1073741824" or "50%" (of the machine's memory)."""
    value = text.strip()
    if value.endswith("%"):
        try:
            share = float(value[:-1])
        except ValueError:
            share = math.nan
        if not 0 < share <= 100:
            raise UsageError(f"{where}: {value!r} is not a share of memory between 0% and 100%")
        return int(machine_memory() * share / 100)
    match = _SIZE.match(value)
    if not match:
        raise UsageError(f"{where}: {value!r} is not a memory size (write e.g. 2GB, 512MiB or 50%)")
    size = int(float(match.group(1)) * _UNITS[(match.group(2) or "B").upper()])
    if size < 64 * 1024**2:
        raise UsageError(f"{where}: {value!r} is below the engine's minimum of 64MB")
    return size


IN_MEMORY_BELOW = 200_000
"""Objects plus rows under which the in-memory diff is used (it holds both as frames)."""


@dataclass(frozen=True)
class EngineLimits:
    """What the engine may use: memory (bytes), where it spills, and how many threads."""

    memory_limit: int
    spill_root: Path | None = None
    """The directory a spill directory is made in (None: the system's temporary directory)."""
    threads: int | None = None
    in_memory_below: int = IN_MEMORY_BELOW
    """Inventories of fewer objects plus rows are diffed in memory by the frame engine, which
    gives the same findings without the engine's start-up (about a second); 0: never."""

    @classmethod
    def default(cls) -> EngineLimits:
        """A quarter of the machine's memory, the system's temporary directory."""
        return cls(memory_limit=int(machine_memory() * DEFAULT_MEMORY_SHARE))

    @classmethod
    def from_settings(cls, conf: settings.Settings) -> EngineLimits:
        """INTEGRITY_MEMORY_LIMIT, INTEGRITY_SPILL_DIR and INTEGRITY_DIFF_IN_MEMORY_BELOW as
        Settings read them; a bad value is a UsageError naming its variable."""
        raw = (conf.memory_limit or "").strip()
        limit = parse_memory_limit(raw) if raw else int(machine_memory() * DEFAULT_MEMORY_SHARE)
        spill = conf.spill_dir
        below = (conf.diff_in_memory_below or "").strip()
        if below and not below.isdigit():
            raise UsageError(
                f"{settings.ENV_DIFF_IN_MEMORY_BELOW}: {below!r} is not a whole number of items"
            )
        return cls(
            memory_limit=limit,
            spill_root=spill,
            in_memory_below=int(below) if below else IN_MEMORY_BELOW,
        )


class _SpillMonitor:
    """The peak size of a spill directory, sampled from a thread while the engine runs."""

    def __init__(self, directory: Path, interval: float = 0.05) -> None:
        self.directory = directory
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spill-monitor", daemon=True)

    def _size(self) -> int:
        total = 0
        try:
            with os.scandir(self.directory) as entries:
                for entry in entries:
                    with suppress(OSError):
                        total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            return 0
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._size())

    def __enter__(self) -> _SpillMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._size())


@dataclass
class EngineSession:
    """One DuckDB connection with its limits, its own work directory and spill measurements."""

    conn: duckdb.DuckDBPyConnection
    limits: EngineLimits
    work_dir: Path
    spill_dir: Path
    monitor: _SpillMonitor

    @property
    def spill_peak_bytes(self) -> int:
        return self.monitor.peak


@contextmanager
def connect(limits: EngineLimits | None = None) -> Iterator[EngineSession]:
    """A DuckDB connection bounded by the limits, spilling into a directory removed after."""
    limits = limits or EngineLimits.default()
    root = limits.spill_root
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix="integrity-diff-", dir=root))
    spill_dir = work_dir / "spill"
    spill_dir.mkdir()
    config: dict[str, Any] = {
        "memory_limit": f"{max(limits.memory_limit // 1024, 1)}KiB",
        "temp_directory": str(spill_dir),
        "preserve_insertion_order": False,
    }
    if limits.threads:
        config["threads"] = limits.threads
    import duckdb  # about 0.3 s: only when the out-of-core diff runs

    conn = duckdb.connect(":memory:", config=config)
    conn.execute("SET TimeZone = 'UTC'")
    try:
        with _SpillMonitor(spill_dir) as monitor:
            yield EngineSession(conn, limits, work_dir, spill_dir, monitor)
    finally:
        conn.close()
        shutil.rmtree(work_dir, ignore_errors=True)


# --------------------------------------------------------------------------- SQL literals


def sql_literal(value: str) -> str:
    """A string as an SQL literal."""
    return "'" + value.replace("'", "''") + "'"
