"""A local directory standing in for a bucket: the embedded default for the demo and tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from integrity.errors import StorageError
from integrity.keys import key_problem, prefix_problem
from integrity.storage.base import PAGE_SIZE, ListingPage, ObjectHead


def _etag(stat: os.stat_result) -> str:
    # Cheap and stable while the file is unchanged; hashing every file would dominate listing.
    return f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"'


class LocalStorage:
    """Keys are paths relative to the root, with '/' separators; the bucket is the root's name.

    Nothing outside the root is ever read or written: a key or prefix with a '..', '.' or empty
    segment, an absolute path or a NUL is refused (StorageError), and so is a listing whose
    directory leads out of the root through a symbolic link.
    """

    backend = "local"

    def __init__(
        self, root: str | Path, bucket: str | None = None, page_size: int = PAGE_SIZE
    ) -> None:
        self.root = Path(root).expanduser().absolute()
        self.bucket = bucket or self.root.name
        self.page_size = page_size
        self.requests = 0

    @property
    def description(self) -> str:
        return f"directory {self.root}"

    def check_access(self) -> None:
        if not self.root.is_dir():
            raise StorageError(f"storage directory {self.root} does not exist")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise StorageError(f"storage directory {self.root} is not readable")

    def _path(self, key: str) -> Path:
        problem = key_problem(key, self.backend)
        if problem is not None:
            raise StorageError(f"key {key[:200]!r} cannot be stored in a directory: it {problem}")
        return self.root.joinpath(*key.split("/"))

    def _listing_base(self, prefix: str) -> tuple[str, Path]:
        """The directory a prefix lists (and its key prefix), refused if it leaves the root."""
        problem = prefix_problem(prefix, self.backend)
        if problem is not None:
            raise StorageError(
                f"cannot list prefix {prefix[:200]!r} in {self.description}: it {problem}"
            )
        base_rel = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
        base = self.root.joinpath(*base_rel.strip("/").split("/")) if base_rel else self.root
        if base_rel:
            real_root = os.path.realpath(self.root)
            if os.path.commonpath([real_root, os.path.realpath(base)]) != real_root:
                raise StorageError(
                    f"cannot list prefix {prefix[:200]!r} in {self.description}: its directory "
                    "is a symbolic link out of the storage directory"
                )
        return base_rel, base

    def _walk(self, directory: Path, rel: str) -> Iterator[tuple[str, os.stat_result]]:
        # In key order, as S3 lists: a directory sorts as its name plus '/', so 'a-b' comes
        # before 'a/...' (resuming after a key then skips exactly the keys already seen).
        try:
            entries = sorted(
                os.scandir(directory),
                key=lambda e: e.name + "/" if e.is_dir(follow_symlinks=False) else e.name,
            )
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            key = rel + entry.name
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(Path(entry.path), key + "/")
            elif entry.is_file(follow_symlinks=False):
                yield key, entry.stat(follow_symlinks=False)

    def list_pages(
        self, prefix: str = "", delimiter: str | None = None, *, start_after: str | None = None
    ) -> Iterator[ListingPage]:
        self.check_access()
        base_rel, base = self._listing_base(prefix)
        page = ListingPage()
        self.requests += 1
        if delimiter == "/":
            try:
                entries = sorted(os.scandir(base), key=lambda e: e.name)
            except (FileNotFoundError, NotADirectoryError):
                entries = []
            for entry in entries:
                key = base_rel + entry.name
                if not key.startswith(prefix):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    page.common_prefixes.append(key + "/")
                elif entry.is_file(follow_symlinks=False):
                    self._append(page, key, entry.stat(follow_symlinks=False))
            yield page
            return
        for key, stat in self._walk(base, base_rel):
            if not key.startswith(prefix) or (start_after is not None and key <= start_after):
                continue
            if len(page) >= self.page_size:  # a full page goes out once another key follows
                page.truncated = True
                yield page
                self.requests += 1
                page = ListingPage()
            self._append(page, key, stat)
        page.truncated = False
        yield page

    @staticmethod
    def _append(page: ListingPage, key: str, stat: os.stat_result) -> None:
        page.keys.append(key)
        page.sizes.append(stat.st_size)
        page.etags.append(_etag(stat))
        page.last_modified.append(datetime.fromtimestamp(stat.st_mtime, tz=timezone.utc))

    def head(self, key: str) -> ObjectHead | None:
        path = self._path(key)
        self.requests += 1
        try:
            stat = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StorageError(
                f"cannot look at key {key[:200]!r} in {self.description}: {exc.strerror or exc}"
            ) from None
        return ObjectHead(
            key, stat.st_size, _etag(stat), datetime.fromtimestamp(stat.st_mtime, tz=timezone.utc)
        )

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".integrity-tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise StorageError(f"object {key[:200]!r} not found in {self.description}") from None
        except OSError as exc:
            raise StorageError(
                f"cannot read key {key[:200]!r} in {self.description}: {exc.strerror or exc}"
            ) from None
