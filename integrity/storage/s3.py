"""An S3-compatible bucket (AWS S3, MinIO, Cloudflare R2) through a boto3 client.

The client comes from `s3_client`, for the CLI and the Dagster resources alike, so credentials
follow the standard AWS chain and never pass through this module's messages.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import unquote_plus

import pyarrow as pa
import pyarrow.compute as pc
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from integrity.errors import StorageError
from integrity.keys import key_problem
from integrity.storage.base import (
    PAGE_SCHEMA,
    PAGE_SIZE,
    ListingFailed,
    ListingPage,
    ObjectHead,
    with_retries,
)
from integrity.storage.s3_listing import (
    COLUMNS,
    UNREADABLE,
    ListingColumns,
    adopt_client,
    install_listing_parser,
)

_RETRYABLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "TooManyRequests",
    "TooManyRequestsException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
}


_CHECKSUM_SETTINGS = ("request_checksum_calculation", "response_checksum_validation")


def s3_client(
    endpoint_url: str | None = None,
    region: str | None = None,
    *,
    max_attempts: int = 5,
    checksums: Mapping[str, str] | None = None,
    core: Any = None,
) -> Any:
    """A storage client; integrity.connections.s3_client gives it the environment's values.

    `endpoint_url` None leaves the endpoint to the AWS config file; `region` None to the profile.
    Checksums are sent only when required (S3-compatible stores reject the newer defaults)
    unless `checksums` (AWS_REQUEST_CHECKSUM_CALCULATION, AWS_RESPONSE_CHECKSUM_VALIDATION) or
    the profile say otherwise. ListObjectsV2 answers are read into Arrow columns
    (integrity.storage.s3_listing); every other part of the client is botocore's. Sends nothing.
    """
    from botocore.config import Config

    from integrity import aws

    core = core or aws.botocore_session()
    factory = install_listing_parser(core)
    scoped = core.get_scoped_config()
    given = checksums or {}
    chosen = {
        name: given.get(name) or scoped.get(name) or "when_required" for name in _CHECKSUM_SETTINGS
    }
    config = Config(retries={"max_attempts": max_attempts, "mode": "standard"}, **chosen)
    client = aws.client(
        "s3",
        core,
        endpoint_url=endpoint_url or None,
        region_name=region or aws.profile_region(core),
        config=config,
    )
    client._integrity_listing_stats = factory.stats
    return adopt_client(client)


class IncompleteAnswer(Exception):
    """A successful answer without what every answer of its kind carries: a connection cut short
    in the middle of the headers still reads as a response, with the rest of them missing."""


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, IncompleteAnswer):
        return True
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code in _RETRYABLE_CODES or status == 429 or status >= 500
    return isinstance(
        exc, (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError, ConnectTimeoutError)
    )


# What ObjectHead is made of; a HEAD answer without them was cut short.
_HEAD_FIELDS = ("ContentLength", "LastModified")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        if err.get("Code") == UNREADABLE:
            return str(err.get("Message", UNREADABLE))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        return f"{err.get('Code', 'error')} (HTTP {status})"
    return type(exc).__name__


class UndecodableKey(Exception):
    """A URL-encoded key or prefix whose bytes are not UTF-8: no S3 key can be, and replacing
    them (as botocore's decoding does) would list an object under a name it does not have."""


def _unquote(value: str) -> str:
    # As botocore's decode_list_object_v2 (unquote_plus), but refusing what is not UTF-8.
    try:
        return unquote_plus(value, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise UndecodableKey(f"the listed name {value[:200]!r} is not URL-encoded UTF-8") from None


def _decoded(keys: pa.Array) -> pa.Array:
    """Keys as named: URL encoding undone where there is any ('%', or '+' for a space)."""
    encoded = pc.or_(pc.match_substring(keys, "%"), pc.match_substring(keys, "+"))
    if not pc.any(encoded).as_py():
        return keys
    return pa.array(
        [_unquote(k) if "%" in k or "+" in k else k for k in keys.to_pylist()], pa.string()
    )


def _columns_from_contents(contents: Any) -> ListingColumns:
    """botocore's own reading of the Contents (a dict per object) as columns."""
    return ListingColumns(
        keys=pa.array([o["Key"] for o in contents], pa.string()),
        sizes=pa.array([o.get("Size", 0) for o in contents], pa.int64()),
        etags=pa.array([o.get("ETag", "") for o in contents], pa.string()),
        last_modified=pa.array([o["LastModified"] for o in contents], pa.timestamp("us", tz="UTC")),
    )


def listing_page(response: dict[str, Any]) -> ListingPage:
    """One ListObjectsV2 answer (asked with EncodingType=url) as a listing page: the columns the
    listing parser read, or botocore's Contents when it read the body, with names decoded."""
    columns = response.get(COLUMNS)
    if columns is None:
        columns = _columns_from_contents(response.get("Contents", ()))
    prefixes = [p["Prefix"] for p in response.get("CommonPrefixes", ())]
    keys = columns.keys
    if response.get("EncodingType") == "url":
        keys = _decoded(keys)
        prefixes = [_unquote(p) for p in prefixes]
    batch = pa.record_batch(
        [keys, columns.sizes, columns.etags, columns.last_modified], schema=PAGE_SCHEMA
    )
    return ListingPage(
        batch=batch, common_prefixes=prefixes, truncated=bool(response.get("IsTruncated"))
    )


class S3Storage:
    """A bucket listed with ListObjectsV2, 1,000 keys a page, following the truncated flag."""

    backend = "s3"

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        page_size: int = PAGE_SIZE,
        attempts: int = 5,
        base_delay: float = 0.2,
    ) -> None:
        if not bucket or "/" in bucket:
            raise StorageError(f"--bucket: {bucket!r} is not a bucket name")
        self.client = client
        self.bucket = bucket
        self.page_size = page_size
        self.attempts = attempts
        self.base_delay = base_delay
        self.requests = 0

    @property
    def description(self) -> str:
        endpoint = getattr(getattr(self.client, "meta", None), "endpoint_url", None)
        return f"s3://{self.bucket}" + (f" at {endpoint}" if endpoint else "")

    def _call(self, method: str, *, required: tuple[str, ...] = (), **kwargs: Any) -> Any:
        """One request with retries; an answer missing a `required` field is a failed attempt."""

        def once() -> Any:
            self.requests += 1
            response = getattr(self.client, method)(**kwargs)
            missing = [name for name in required if name not in response]
            if missing:
                raise IncompleteAnswer(f"incomplete answer (no {', '.join(missing)})")
            return response

        return with_retries(once, is_retryable, attempts=self.attempts, base_delay=self.base_delay)

    def check_access(self) -> None:
        try:
            self._call("head_bucket", Bucket=self.bucket)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status == 404 or exc.response.get("Error", {}).get("Code") in (
                "404",
                "NoSuchBucket",
            ):
                raise StorageError(
                    f"bucket {self.bucket!r} does not exist ({self.description})"
                ) from None
            if status == 403:
                raise StorageError(
                    f"access to bucket {self.bucket!r} denied ({self.description}): check the credentials"
                ) from None
            raise StorageError(f"cannot reach bucket {self.bucket!r}: {_describe(exc)}") from None
        except NoCredentialsError:
            raise StorageError(
                "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or a profile"
            ) from None
        except BotoCoreError as exc:
            raise StorageError(f"cannot reach {self.description}: {_describe(exc)}") from None

    def list_pages(
        self, prefix: str = "", delimiter: str | None = None, *, start_after: str | None = None
    ) -> Iterator[ListingPage]:
        # Asked explicitly, so botocore leaves the decoding to listing_page, for keys read by
        # the listing parser and by botocore alike.
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": prefix,
            "MaxKeys": self.page_size,
            "EncodingType": "url",
        }
        if delimiter:
            kwargs["Delimiter"] = delimiter
        if start_after:
            kwargs["StartAfter"] = start_after
        while True:
            try:
                response = self._call("list_objects_v2", **kwargs)
            except (ClientError, BotoCoreError) as exc:
                raise ListingFailed(
                    f"listing s3://{self.bucket}/{prefix} failed after {self.attempts} attempts: {_describe(exc)}"
                ) from None
            try:
                page = listing_page(response)
            except UndecodableKey as exc:
                raise ListingFailed(f"listing s3://{self.bucket}/{prefix}: {exc}") from None
            yield page
            # Stop on the truncated flag, never on the page size: R2 may return short pages.
            if not response.get("IsTruncated"):
                return
            token = response.get("NextContinuationToken")
            if not token:
                raise ListingFailed(
                    f"listing s3://{self.bucket}/{prefix}: truncated page without a continuation token"
                )
            kwargs["ContinuationToken"] = token

    def _check_key(self, key: str) -> None:
        problem = key_problem(key, self.backend)
        if problem is not None:
            raise StorageError(f"key {key[:200]!r} cannot name an object in S3: it {problem}")

    def head(self, key: str) -> ObjectHead | None:
        self._check_key(key)
        try:
            response = self._call("head_object", required=_HEAD_FIELDS, Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise StorageError(
                f"HEAD s3://{self.bucket}/{key[:200]} failed: {_describe(exc)}"
            ) from None
        except IncompleteAnswer as exc:
            raise StorageError(
                f"HEAD s3://{self.bucket}/{key[:200]} failed after {self.attempts} attempts: {exc}"
            ) from None
        except BotoCoreError as exc:  # a reset or timeout that outlasted the retries
            raise StorageError(
                f"HEAD s3://{self.bucket}/{key[:200]} failed: {_describe(exc)}"
            ) from None
        return ObjectHead(
            key, response["ContentLength"], response.get("ETag", ""), response["LastModified"]
        )

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        self._check_key(key)
        extra = {"ContentType": content_type} if content_type else {}
        self._call("put_object", Bucket=self.bucket, Key=key, Body=data, **extra)

    def get_bytes(self, key: str) -> bytes:
        self._check_key(key)
        try:
            return self._call("get_object", Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            raise StorageError(
                f"GET s3://{self.bucket}/{key[:200]} failed: {_describe(exc)}"
            ) from None
