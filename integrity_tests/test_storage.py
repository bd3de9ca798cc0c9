"""Listing behaviour against real stores: pagination, short pages, retries, incomplete listings."""

from __future__ import annotations

import pytest

from integrity.errors import StorageError
from integrity.inventory import covering_prefixes, list_storage, minimal_prefixes
from integrity.storage import LocalStorage, S3Storage
from integrity_tests.flaky_proxy import FlakyProxy


def _seed(client, bucket: str, keys: list[str]) -> None:
    """Write straight into moto's in-process backend (PUT over HTTP is slow); listing stays HTTP."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    for key in keys:
        backend.put_object(bucket, key, b"x")


def _client(endpoint: str):
    from dagster_aws.s3 import S3Resource

    return S3Resource(endpoint_url=endpoint, region_name="us-east-1", max_attempts=1).get_client()


def test_listing_follows_continuation_across_pages(s3_client, bucket) -> None:
    keys = [f"documents/org-{i % 3}/{i:05d}.pdf" for i in range(2_345)] + ["root.txt"]
    _seed(s3_client, bucket, keys)
    store = S3Storage(s3_client, bucket)

    inventory = list_storage(store)

    assert inventory.complete
    assert sorted(inventory.objects["key"]) == sorted(keys)
    assert list(inventory.objects.columns) == ["key", "size", "etag", "last_modified"]
    assert str(inventory.objects["last_modified"].dtype) == "datetime64[us, UTC]"
    assert (inventory.objects["size"] == 1).all()
    # one delimiter listing (which also yields root.txt), then documents/ in 3 pages of 1,000
    assert inventory.requests == 4


def test_short_pages_do_not_end_the_listing(moto_endpoint, s3_client, bucket) -> None:
    keys = [f"documents/org-1/{i:03d}.pdf" for i in range(50)]
    _seed(s3_client, bucket, keys)
    with FlakyProxy(moto_endpoint) as proxy:
        proxy.max_keys = 7  # the store answers fewer keys than asked, with IsTruncated set
        inventory = list_storage(S3Storage(_client(proxy.endpoint), bucket), ["documents/"])
    assert inventory.complete
    assert sorted(inventory.objects["key"]) == keys
    assert proxy.lists_served == 8


def test_throttled_pages_are_retried_with_backoff(moto_endpoint, s3_client, bucket) -> None:
    keys = [f"documents/org-1/{i:04d}.pdf" for i in range(1_500)]
    _seed(s3_client, bucket, keys)
    with FlakyProxy(moto_endpoint) as proxy:
        proxy.fail_next_lists = 3
        store = S3Storage(_client(proxy.endpoint), bucket, attempts=5, base_delay=0.01)
        inventory = list_storage(store, ["documents/"])
    assert inventory.complete
    assert len(inventory.objects) == 1_500
    assert proxy.lists_failed == 3


def test_a_page_failing_after_its_retries_makes_the_inventory_incomplete(
    moto_endpoint, s3_client, bucket
) -> None:
    _seed(s3_client, bucket, [f"documents/org-1/{i:04d}.pdf" for i in range(2_500)])
    with FlakyProxy(moto_endpoint) as proxy:
        proxy.fail_lists_after = 1  # the first page succeeds, every later one is throttled for good
        store = S3Storage(_client(proxy.endpoint), bucket, attempts=3, base_delay=0.01)
        inventory = list_storage(store, ["documents/"])
    assert not inventory.complete
    assert len(inventory.objects) == 1_000
    assert (
        inventory.errors
        and "SlowDown" in inventory.errors[0]
        and "after 3 attempts" in inventory.errors[0]
    )


def test_missing_bucket_is_one_clear_error(s3_client) -> None:
    with pytest.raises(StorageError, match=r"bucket 'no-such-bucket' does not exist"):
        S3Storage(s3_client, "no-such-bucket").check_access()


def test_unreachable_endpoint_is_one_clear_error() -> None:
    store = S3Storage(_client("http://127.0.0.1:1"), "media", attempts=1)
    with pytest.raises(StorageError, match="cannot reach"):
        store.check_access()


def test_missing_storage_directory_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        LocalStorage(tmp_path / "nowhere").check_access()


def test_local_listing_pages_and_prefixes(tmp_path) -> None:
    store = LocalStorage(tmp_path / "media", page_size=10)
    (tmp_path / "media").mkdir()
    keys = [f"documents/org-{i % 2}/{i:03d}.pdf" for i in range(25)] + [
        "documents-extra/x.pdf",
        "top.txt",
    ]
    for key in keys:
        store.put_bytes(key, b"abc")
    assert sorted(list_storage(store).objects["key"]) == sorted(keys)
    assert sorted(list_storage(store, ["documents/org-1/"]).objects["key"]) == sorted(
        k for k in keys if k.startswith("documents/org-1/")
    )
    pages = list(store.list_pages("documents/"))
    assert [len(p) for p in pages] == [10, 10, 5]
    assert store.bucket == "media"


def test_local_storage_refuses_keys_that_escape_the_root(tmp_path) -> None:
    store = LocalStorage(tmp_path)
    with pytest.raises(StorageError):
        store.put_bytes("../outside.txt", b"x")


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("../outside/secret.txt", "has a '..' segment"),
        ("media-sibling/../../outside/secret.txt", "has a '..' segment"),
        ("/etc/hostname", "is an absolute path"),
        ("images//a.jpg", "has an empty segment ('//')"),
        ("images/./a.jpg", "has a '.' segment"),
        ("images/", "ends in '/'"),
        ("images/a\x00b.jpg", "holds a NUL character"),
        ("images/" + "x" * 256, "has a segment of 256 bytes"),
        ("", "is empty"),
    ],
)
def test_local_storage_refuses_every_key_it_cannot_hold_with_one_line(
    tmp_path, key: str, reason: str
) -> None:
    """head, get and put all refuse, with StorageError naming why: never an OSError or a
    ValueError, and never a file outside the root (nor a directory) taken for an object."""
    root = tmp_path / "media"
    (root / "images").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("not in the bucket")
    store = LocalStorage(root)
    for call in (store.head, store.get_bytes, lambda k: store.put_bytes(k, b"x")):
        with pytest.raises(StorageError, match="cannot be stored in a directory") as caught:
            call(key)
        assert reason in str(caught.value) and "\n" not in str(caught.value)
    assert (tmp_path / "outside" / "secret.txt").read_text() == "not in the bucket"
    assert sorted(p.name for p in root.rglob("*")) == ["images"]


@pytest.mark.parametrize(
    "prefix", ["../", "../outside/", "images/../../outside/", "/etc/", "images//", "./", "a\x00/"]
)
def test_local_listing_refuses_prefixes_that_leave_the_root(tmp_path, prefix: str) -> None:
    root = tmp_path / "media"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("not in the bucket")
    store = LocalStorage(root)
    store.put_bytes("images/a.jpg", b"x")
    for delimiter in (None, "/"):
        with pytest.raises(StorageError, match="cannot list prefix") as caught:
            list(store.list_pages(prefix, delimiter))
        assert "\n" not in str(caught.value)
    inventory = list_storage(store, [prefix])
    assert not inventory.complete and inventory.objects.empty
    assert [e.split(": it ")[0] for e in inventory.errors] == [
        f"cannot list prefix {prefix!r} in {store.description}"
    ]


def test_local_listing_does_not_follow_a_link_out_of_the_root(tmp_path) -> None:
    root = tmp_path / "media"
    (root / "documents").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("not in the bucket")
    (root / "documents" / "org-1").symlink_to(tmp_path / "outside", target_is_directory=True)
    (root / "inside").symlink_to(root / "documents", target_is_directory=True)
    store = LocalStorage(root)
    store.put_bytes("documents/org-2/a.pdf", b"x")
    with pytest.raises(StorageError, match="symbolic link out of the storage directory"):
        list(store.list_pages("documents/org-1/"))
    assert [k for p in store.list_pages("inside/") for k in p.keys] == ["inside/org-2/a.pdf"]
    assert list(list_storage(store).objects["key"]) == ["documents/org-2/a.pdf"]


def test_s3_refuses_a_key_over_1024_bytes_without_a_request(s3_client, bucket) -> None:
    store = S3Storage(s3_client, bucket)
    key = "images/" + "k" * 1018  # 1,025 bytes
    for call in (store.head, store.get_bytes, lambda k: store.put_bytes(k, b"x")):
        with pytest.raises(StorageError, match="is 1,025 bytes of UTF-8; an S3 key holds at most"):
            call(key)
    assert store.requests == 0
    assert store.head("images/" + "k" * 1017) is None  # 1,024 bytes: asked, and absent


def test_minimal_and_covering_prefixes() -> None:
    assert minimal_prefixes(["a/", "a/b/", "b/", "a/"]) == ["a/", "b/"]
    assert covering_prefixes(
        ["documents/org-1/x", "img/p/1.jpg", "img/p/2.jpg", "top.jpg"], ["documents/org-1/"]
    ) == [
        "img/p/",
        "top.jpg",
    ]
    many = [f"img/{i}/{j}.jpg" for i in range(100) for j in range(2)]
    assert covering_prefixes(many, [], max_prefixes=64) == ["img/"]
    assert covering_prefixes([f"{i}.jpg" for i in range(100)], [], max_prefixes=64) == [""]


def test_root_level_objects_cost_no_request_each(s3_client, bucket) -> None:
    keys = [f"loose-{i:05d}.jpg" for i in range(2_100)] + ["images/a.jpg"]
    _seed(s3_client, bucket, keys)
    inventory = list_storage(S3Storage(s3_client, bucket))
    assert sorted(inventory.objects["key"]) == sorted(keys)
    assert inventory.requests == 4  # three delimiter pages of the root, one page of images/
