"""The listing parser reads ListObjectsV2 answers exactly as botocore's own parser does.

On hand-written bodies (AWS's layout, every construct XML allows and the reader leaves to
botocore, broken bodies) and on moto's real answers for tricky keys, the columns it reads equal
botocore's Contents, and everything else in the answer is botocore's; a listing through it
follows IsTruncated, retries faults, and fails a page with a readable reason when it must.
"""

from __future__ import annotations

import uuid
from contextlib import suppress
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pytest
from botocore import handlers
from botocore.exceptions import ClientError
from botocore.parsers import RestXMLParser

from integrity.inventory import list_storage
from integrity.storage import S3Storage
from integrity.storage.base import PAGE_SCHEMA, ListingFailed, ListingPage, list_common_prefixes
from integrity.storage.s3 import UndecodableKey, listing_page, s3_client
from integrity.storage.s3_listing import COLUMNS, UNREADABLE, ListingParserFactory, listing_stats
from integrity_tests.flaky_proxy import FAULTS, FlakyProxy

ATTEMPTS = 3


def _operation() -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model("s3").operation_model("ListObjectsV2")


OPERATION = _operation()

# --------------------------------------------------------------------------- the two readings


def _response(body: bytes, status: int = 200) -> dict[str, Any]:
    return {"body": body, "headers": {}, "status_code": status, "context": {}}


def _botocore(body: bytes) -> dict[str, Any]:
    """What a stock client makes of the body: its 200 check, then its parser."""
    response = _response(body)
    handlers._handle_200_error(OPERATION, response)
    return RestXMLParser().parse(response, OPERATION.output_shape)


def _ours(body: bytes) -> tuple[dict[str, Any], bool]:
    """The listing parser's reading, and whether it read the Contents itself."""
    factory = ListingParserFactory()
    parsed = factory.create_parser("rest-xml").parse(_response(body), OPERATION.output_shape)
    assert factory.stats.columnar + factory.stats.botocore == 1
    return parsed, factory.stats.columnar == 1


def _rows(parsed: dict[str, Any]) -> list[tuple]:
    columns = parsed.get(COLUMNS)
    if columns is not None:
        assert "Contents" not in parsed
        return list(
            zip(
                columns.keys.to_pylist(),
                columns.sizes.to_pylist(),
                columns.etags.to_pylist(),
                columns.last_modified.to_pylist(),
            )
        )
    return [
        (o["Key"], o.get("Size"), o.get("ETag"), o.get("LastModified"))
        for o in parsed.get("Contents", ())
    ]


def _rest(parsed: dict[str, Any]) -> dict[str, Any]:
    rest = {k: v for k, v in parsed.items() if k not in (COLUMNS, "Contents", "ResponseMetadata")}
    rest["status"] = parsed["ResponseMetadata"]["HTTPStatusCode"]
    return rest


def _assert_same(body: bytes) -> tuple[dict[str, Any], bool]:
    ours, columnar = _ours(body)
    theirs = _botocore(body)
    assert _rows(ours) == _rows(theirs)
    assert _rest(ours) == _rest(theirs)
    return ours, columnar


# --------------------------------------------------------------------------- hand-written bodies

DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'
ROOT = b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
HEAD = b"<Name>media</Name><Prefix></Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys>"
TRUNCATED = b"<IsTruncated>true</IsTruncated><NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbY=</NextContinuationToken>"  # noqa: E501
ETAG = b"&quot;0cc175b9c0f1b6a831c399e269772661&quot;"
LAST_MODIFIED = b"2026-01-02T03:04:05.678Z"


def _object(
    key: bytes,
    *,
    etag: bytes = ETAG,
    size: bytes = b"1",
    last_modified: bytes = LAST_MODIFIED,
    before_size: bytes = b"",
    after_size: bytes = b"<StorageClass>STANDARD</StorageClass>",
) -> bytes:
    return (
        b"<Contents><Key>" + key + b"</Key><LastModified>" + last_modified + b"</LastModified>"
        b"<ETag>" + etag + b"</ETag>" + before_size + b"<Size>" + size + b"</Size>"
        + after_size + b"</Contents>"
    )  # fmt: skip


def _body(
    *objects: bytes,
    declaration: bytes = DECLARATION,
    head: bytes = HEAD + TRUNCATED,
    tail: bytes = b"",
    between: bytes = b"\n  ",
) -> bytes:
    return declaration + ROOT + head + between.join(objects) + tail + b"</ListBucketResult>"


PLAIN = _object(b"documents/org-1/a.pdf")
READ_HERE = {
    "AWS's layout": _body(
        _object(
            b"documents/a.pdf",
            before_size=b"<ChecksumAlgorithm>CRC32</ChecksumAlgorithm><ChecksumType>FULL_OBJECT</ChecksumType>",
            after_size=b"<Owner><ID>75aa57f0</ID><DisplayName>webfile</DisplayName></Owner>"
            b"<StorageClass>STANDARD</StorageClass>",
        ),
        _object(b"documents/b.pdf", etag=b"&quot;9b2cf535f27731c974343645a3985328-3&quot;"),
    ),
    "rclone's layout": _body(
        _object(
            b"a", etag=b"f229a62b5d1c80fa6d65a083c35a642c", last_modified=b"2026-12-02T02:24:38.61Z"
        ),
        _object(b"b", etag=b"", last_modified=b"2026-12-02T02:24:38Z"),
        between=b"\n    ",
        tail=b"<EncodingType>url</EncodingType>",
    ),
    "entities in keys": _body(
        _object(b"a&amp;b &lt;c&gt; &quot;d&quot; &apos;e&apos;"),
        _object(b"char &#233; &#xE9; &#x1F600; &#13; &#9;"),
    ),
    "raw UTF-8, NFC and NFD, spaces, '+', '%', '/' ends": _body(
        _object("café/é/😀".encode()),
        _object("cafe\u0301/e\u0301".encode()),
        _object(b"a b+c%41%zz"),
        _object(b"folder/"),
        _object(b"a//b"),
        _object(b"/leading"),
        _object(b"tab\there\nnewline"),
    ),
    "a 1,024-byte key": _body(_object(b"k" * 1024), _object("é".encode() * 512)),
    "microseconds": _body(_object(b"a", last_modified=b"2026-01-02T03:04:05.123456Z")),
    "CommonPrefixes next to Contents": _body(
        PLAIN,
        tail=b"<CommonPrefixes><Prefix>documents/org-2/</Prefix></CommonPrefixes>"
        b"<CommonPrefixes><Prefix>documents/org-3/</Prefix></CommonPrefixes>"
        b"<Delimiter>/</Delimiter>",
    ),
    "no declaration": _body(PLAIN, declaration=b""),
    "the last page": _body(PLAIN, head=HEAD + b"<IsTruncated>false</IsTruncated>"),
}

LEFT_TO_BOTOCORE = {
    "a carriage return": _body(_object(b"line\r\nbreak\rx")),
    "a comment": _body(PLAIN, b"<!-- a note -->", _object(b"b")),
    "a commented-out Contents": _body(PLAIN, tail=b"<!-- " + _object(b"ghost") + b" -->"),
    "CDATA": _body(_object(b"<![CDATA[a<b]]>")),
    "an attribute": _body(PLAIN.replace(b"<Key>", b'<Key xml:space="preserve">')),
    "another order": _body(
        b"<Contents><Key>a</Key><Size>1</Size><ETag>x</ETag><LastModified>"
        + LAST_MODIFIED
        + b"</LastModified></Contents>"
    ),
    "an unknown member": _body(_object(b"a", after_size=b"<Tier>hot</Tier>")),
    "Contents inside another element": _body(b"<Wrapper>" + PLAIN + b"</Wrapper>"),
    "a namespace prefix": b'<s3:ListBucketResult xmlns:s3="http://s3.amazonaws.com/doc/2006-03-01/">'
    b"<s3:Contents><s3:Key>a</s3:Key><s3:Size>1</s3:Size></s3:Contents></s3:ListBucketResult>",
    "a time with an offset": _body(_object(b"a", last_modified=b"2026-01-02T03:04:05+00:00")),
    "nanoseconds": _body(_object(b"a", last_modified=b"2026-01-02T03:04:05.123456789Z")),
    "a size past int64": _body(_object(b"a", size=b"9223372036854775808")),
    "Contents split by CommonPrefixes": _body(
        PLAIN, b"<CommonPrefixes><Prefix>p/</Prefix></CommonPrefixes>", _object(b"z")
    ),
    "only CommonPrefixes": _body(b"<CommonPrefixes><Prefix>p/</Prefix></CommonPrefixes>"),
    "an empty page": _body(head=HEAD + b"<IsTruncated>false</IsTruncated>"),
    "an empty body": b"",
    "a processing instruction": _body(PLAIN, b"<?note x?>", _object(b"b")),
}

UNREADABLE_BODIES = {
    "cut after a Contents": _body(PLAIN, _object(b"b"))[: -len(b"</ListBucketResult>")],
    "cut inside a Contents": _body(PLAIN, _object(b"b"))[:-40],
    "cut before any Contents": (DECLARATION + ROOT + HEAD)[:-5],
    "an unknown entity": _body(_object(b"a&nbsp;b")),
    "a bare ampersand in a skipped member": _body(
        _object(b"a", after_size=b"<StorageClass>A&B</StorageClass>")
    ),  # noqa: E501
    "a reference to NUL": _body(_object(b"a&#0;b")),
    "a control character": _body(_object(b"a\x01b")),
    "not UTF-8": _body(_object(b"caf\xe9")),
    # botocore reads every answer as UTF-8, whatever its declaration says
    "declared Latin-1": b'<?xml version="1.0" encoding="ISO-8859-1"?>'
    + ROOT
    + _object(b"caf\xe9")
    + b"</ListBucketResult>",
}


@pytest.mark.parametrize("name", READ_HERE)
def test_bodies_the_reader_matches_are_read_into_columns_as_botocore_reads_them(name) -> None:
    ours, columnar = _assert_same(READ_HERE[name])
    assert columnar
    assert ours[COLUMNS].last_modified.type == pa.timestamp("us", tz="UTC")


def test_the_columns_hold_exactly_the_values_of_the_xml() -> None:
    ours, _ = _ours(READ_HERE["entities in keys"])
    assert ours[COLUMNS].keys.to_pylist() == [
        "a&b <c> \"d\" 'e'",
        "char é é 😀 \r \t",
    ]
    assert ours[COLUMNS].etags.to_pylist() == ['"0cc175b9c0f1b6a831c399e269772661"'] * 2
    stamp = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
    assert ours[COLUMNS].last_modified.to_pylist() == [stamp, stamp]
    assert ours["IsTruncated"] is True
    assert ours["NextContinuationToken"] == "1ueGcxLPRx1Tr/XYExHnhbY="
    nfc, nfd = _ours(READ_HERE["raw UTF-8, NFC and NFD, spaces, '+', '%', '/' ends"])[0][
        COLUMNS
    ].keys.to_pylist()[:2]
    assert nfc.encode() == "café/é/😀".encode() and nfd.encode() == b"cafe\xcc\x81/e\xcc\x81"


@pytest.mark.parametrize("name", LEFT_TO_BOTOCORE)
def test_bodies_the_reader_does_not_match_are_read_by_botocore(name) -> None:
    _, columnar = _assert_same(LEFT_TO_BOTOCORE[name])
    assert not columnar


@pytest.mark.parametrize("name", UNREADABLE_BODIES)
def test_a_body_that_is_no_xml_document_is_a_retryable_error_with_its_reason(name) -> None:
    ours, columnar = _ours(UNREADABLE_BODIES[name])
    theirs = _botocore(UNREADABLE_BODIES[name])
    assert not columnar and _rows(ours) == [] == _rows(theirs)
    # botocore makes it a 500, so the retries apply; the reason says what was wrong
    assert (
        ours["ResponseMetadata"]["HTTPStatusCode"]
        == 500
        == theirs["ResponseMetadata"]["HTTPStatusCode"]
    )  # noqa: E501
    assert ours["Error"]["Code"] == UNREADABLE
    assert ours["Error"]["Message"].startswith("a 200 answer whose body is not an XML document (")


def test_an_error_inside_a_200_is_botocores_error() -> None:
    body = (
        b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
    )
    ours, columnar = _assert_same(body)
    assert not columnar and ours["Error"]["Code"] == "SlowDown"


def test_a_listing_page_decodes_url_encoded_names_and_refuses_what_is_not_utf8() -> None:
    body = _body(
        _object(b"a+b%2Bc%25d%0D%0A"),
        _object(b"caf%C3%A9/e%CC%81"),
        tail=b"<CommonPrefixes><Prefix>p+q%2F/</Prefix></CommonPrefixes><EncodingType>url</EncodingType>",  # noqa: E501
    )
    ours, columnar = _ours(body)
    assert columnar
    page = listing_page(ours)
    assert page.keys == ["a b+c%d\r\n", "café/e\u0301"]
    assert page.common_prefixes == ["p q//"]
    assert page.truncated is True
    # botocore's own decoding (an auto-set EncodingType) gives the same names
    theirs = _botocore(body)
    handlers.decode_list_object_v2(theirs, {"encoding_type_auto_set": True})
    assert [o["Key"] for o in theirs["Contents"]] == page.keys
    with pytest.raises(UndecodableKey, match="is not URL-encoded UTF-8"):
        listing_page(_ours(_body(_object(b"bad%FF"), tail=b"<EncodingType>url</EncodingType>"))[0])


def test_a_listing_page_is_lists_or_one_batch() -> None:
    stamp = datetime(2026, 1, 2, tzinfo=timezone.utc)
    from_lists = ListingPage(["a", "b"], [1, 2], ["x", "y"], [stamp, stamp], truncated=False)
    batch = from_lists.to_batch()
    assert batch.schema.equals(PAGE_SCHEMA) and batch.num_rows == 2
    from_batch = ListingPage(batch=batch, common_prefixes=["p/"], truncated=True)
    assert len(from_batch) == 2 and from_batch.to_batch() is batch
    assert from_batch.keys == ["a", "b"] and from_batch.sizes == [1, 2]
    assert from_batch.last_modified == [stamp, stamp]
    with pytest.raises(ValueError, match="either lists or one record batch"):
        ListingPage(["a"], batch=batch)


# --------------------------------------------------------------------------- moto's answers

TRICKY = [
    "amp&ersand",
    "less<than>greater",
    "quote\"d'",
    "plus+sign",
    "per%cent%41",
    "with space",
    "ctrl\x01\x02\x1f\x7f",
    "line\r\nbreak\ttab",
    "emoji😀🙂",
    "café-nfc",
    "cafe\u0301-nfd",
    "k" * 1024,
    "folder/",
    "a//b",
    "/leading",
    "x/./y/../z",
    "trailing ",
]


def _plant(bucket: str, keys: list[str]) -> None:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    for n, key in enumerate(keys):
        backend.put_object(bucket, key, b"x" * n)


def _fast_store(endpoint: str, bucket: str, page_size: int = 4) -> S3Storage:
    client = s3_client(endpoint, "us-east-1", max_attempts=1)
    return S3Storage(client, bucket, page_size=page_size, attempts=ATTEMPTS, base_delay=0.001)


def _stock_rows(s3_client_stock: Any, bucket: str, **kwargs: Any) -> list[tuple]:
    paginator = s3_client_stock.get_paginator("list_objects_v2")
    return [
        (o["Key"], o["Size"], o["ETag"], o["LastModified"])
        for page in paginator.paginate(Bucket=bucket, PaginationConfig={"PageSize": 5}, **kwargs)
        for o in page.get("Contents", ())
    ]


def _page_rows(pages: Any) -> list[tuple]:
    return [
        row for page in pages for row in zip(page.keys, page.sizes, page.etags, page.last_modified)
    ]


def test_tricky_keys_are_listed_as_botocore_lists_them(moto_endpoint, s3_client, bucket) -> None:
    _plant(bucket, TRICKY)
    store = _fast_store(moto_endpoint, bucket)
    listed = _page_rows(store.list_pages(""))

    assert listed == _stock_rows(s3_client, bucket)
    # byte-exact, in UTF-8 byte order, NFC and NFD apart
    assert [row[0] for row in listed] == sorted(TRICKY, key=lambda k: k.encode())
    assert [row[1] for row in listed] == [TRICKY.index(row[0]) for row in listed]
    stats = listing_stats(store.client)
    assert stats is not None and stats.columnar == 5 and stats.botocore == 0


def test_moto_bodies_read_the_same_with_and_without_url_encoding(moto_endpoint, bucket) -> None:
    """The raw answers themselves, through both parsers (without EncodingType, the control
    characters are in the body as moto writes them)."""
    import boto3

    _plant(bucket, TRICKY)
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bodies: list[bytes] = []
    client.meta.events.register(
        "before-parse.s3.ListObjectsV2",
        lambda response_dict, **_: bodies.append(response_dict["body"]),
    )
    client.list_objects_v2(Bucket=bucket, EncodingType="url")
    client.list_objects_v2(Bucket=bucket, Prefix="a", EncodingType="url")
    with suppress(ClientError):  # what is compared is the two parsers' reading of the body
        client.list_objects_v2(Bucket=bucket)
    assert len(bodies) >= 3
    readings = [_assert_same(body) for body in bodies]
    assert [columnar for _, columnar in readings][:2] == [True, True]


def test_listing_through_the_fast_client_equals_the_stock_client(
    moto_endpoint, s3_client, bucket
) -> None:  # noqa: E501
    keys = [f"documents/org-{i % 3}/{i:03d} {i}+.pdf" for i in range(60)] + ["root.txt", "top/"]
    _plant(bucket, keys)
    fast = list_storage(_fast_store(moto_endpoint, bucket, page_size=7))
    stock = list_storage(S3Storage(s3_client, bucket, page_size=7))
    assert fast.complete and stock.complete
    assert (
        fast.objects.sort_values("key")
        .reset_index(drop=True)
        .equals(stock.objects.sort_values("key").reset_index(drop=True))
    )
    assert sorted(fast.objects["key"]) == sorted(keys)


def test_delimiter_prefixes_and_start_after_through_the_fast_client(moto_endpoint, bucket) -> None:
    names = ["a b/", "c+d/", "e%f/", "é/", "e\u0301/"]
    _plant(bucket, [f"{n}x" for n in names] + ["root"])
    store = _fast_store(moto_endpoint, bucket, page_size=2)
    assert list_common_prefixes(store, "") == sorted(names, key=lambda n: n.encode())
    after = [k for page in store.list_pages("", start_after="c+d/x") for k in page.keys]
    assert after == sorted(
        (k for k in [f"{n}x" for n in names] + ["root"] if k.encode() > b"c+d/x"),
        key=lambda k: k.encode(),
    )


# --------------------------------------------------------------------------- faults


def _keys(n: int = 40) -> list[str]:
    return [f"documents/org-{i % 2}/{i:03d}.pdf" for i in range(n)]


def test_short_pages_do_not_end_a_fast_listing(moto_endpoint, bucket) -> None:
    _plant(bucket, _keys())
    with FlakyProxy(moto_endpoint) as proxy:
        proxy.max_keys = 3
        store = _fast_store(proxy.endpoint, bucket, page_size=10)
        listed = [k for page in store.list_pages("documents/") for k in page.keys]
    assert listed == sorted(_keys())
    assert proxy.lists_served == 14


def test_a_truncated_page_without_a_token_fails_the_listing(moto_endpoint, bucket) -> None:
    _plant(bucket, _keys())
    with FlakyProxy(moto_endpoint) as proxy:
        proxy.drop_continuation_tokens = True
        store = _fast_store(proxy.endpoint, bucket, page_size=10)
        with pytest.raises(ListingFailed) as failed:
            list(store.list_pages("documents/"))
        inventory = list_storage(store, ["documents/"])
    assert str(failed.value) == (
        f"listing s3://{bucket}/documents/: truncated page without a continuation token"
    )
    assert not inventory.complete and inventory.errors == [str(failed.value)]


@pytest.mark.parametrize("fault", FAULTS)
def test_faulted_pages_are_retried_into_the_same_listing(fault, moto_endpoint, bucket) -> None:
    _plant(bucket, _keys())
    direct = list_storage(_fast_store(moto_endpoint, bucket, page_size=5), ["documents/"])
    with FlakyProxy(moto_endpoint) as proxy:
        proxy.inject(fault, 0.3, on=("list",), seed=3)
        store = S3Storage(
            s3_client(proxy.endpoint, "us-east-1", max_attempts=1),
            bucket,
            page_size=5,
            attempts=8,
            base_delay=0.001,
        )
        faulty = list_storage(store, ["documents/"])
    assert proxy.faulted["list"] > 0
    assert faulty.complete, faulty.errors
    assert faulty.objects.equals(direct.objects)


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("503", r"SlowDown \(HTTP 503\)"),
        ("reset", r"\w+Error"),
        ("short", r"a 200 answer whose body is not an XML document \(.+\)"),
    ],
)
def test_a_page_that_always_fails_is_one_readable_reason(
    fault, reason, moto_endpoint, bucket
) -> None:  # noqa: E501
    _plant(bucket, _keys())
    with FlakyProxy(moto_endpoint) as proxy:
        proxy.inject(fault, 1.0, on=("list",))
        inventory = list_storage(_fast_store(proxy.endpoint, bucket), ["documents/"])
        # each of the store's attempts is botocore's first try and its one retry (max_attempts=1)
        assert proxy.faulted["list"] == 2 * ATTEMPTS
    assert not inventory.complete and inventory.objects.empty
    [error] = inventory.errors
    assert error.startswith(f"listing s3://{bucket}/documents/ failed after {ATTEMPTS} attempts: ")
    assert __import__("re").fullmatch(reason, error.split(" attempts: ", 1)[1]), error
    assert "\n" not in error


def test_the_fast_client_keeps_the_configured_endpoint_and_retries(moto_endpoint) -> None:
    client = s3_client(moto_endpoint, "us-east-1", max_attempts=4)
    assert client.meta.endpoint_url == moto_endpoint
    assert client.meta.region_name == "us-east-1"
    assert client.meta.config.retries == {"total_max_attempts": 5, "mode": "standard"}
    bucket = f"integrity-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    assert client.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_the_fast_client_follows_the_profile(moto_endpoint, bucket, tmp_path, monkeypatch) -> None:
    """Endpoint, region, addressing style and credentials from an AWS profile (the standard
    chain, as dagster-aws's S3Resource reads it too): the listing goes through them."""
    _plant(bucket, _keys(12))
    config = tmp_path / "config"
    config.write_text(
        "[profile integrity-listing]\n"
        f"endpoint_url = {moto_endpoint}\n"
        "region = us-east-1\n"
        "aws_access_key_id = profile-key\n"
        "aws_secret_access_key = profile-secret\n"
        "s3 =\n    addressing_style = path\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "integrity-listing")
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
    ):  # noqa: E501
        monkeypatch.delenv(name, raising=False)
    client = s3_client()
    assert client.meta.endpoint_url == moto_endpoint
    assert client.meta.config.s3 == {"addressing_style": "path"}
    store = S3Storage(client, bucket, page_size=5)
    assert [k for page in store.list_pages("") for k in page.keys] == sorted(_keys(12))
    assert listing_stats(client).columnar == 3  # signed with the profile's keys: none other set
