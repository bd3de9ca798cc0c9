"""ListObjectsV2 answers read straight into Arrow columns, inside botocore.

botocore signs, retries, resolves the endpoint and the credentials, and parses every answer but
one: a successful ListObjectsV2 body, whose `<Contents>` elements are read here by one strict
regular expression into columns (timestamps, sizes and UTF-8 checked by Arrow, vectorised).
Everything around them - the root, IsTruncated, NextContinuationToken, CommonPrefixes,
EncodingType, and every error - is still parsed by botocore's own parser, so those mean what
they always meant.

A body is read here only when it is exactly what the expression understands; anything else
(an element in another order, an attribute, a comment, CDATA, a carriage return, an encoding
other than UTF-8, a timestamp outside RFC 3339 with 'Z', a `<Contents>` outside the root, ...)
is handed whole to botocore's parser, so the answer is never other than botocore's, only
slower. A body that is no XML document at all (cut short, say) becomes a retryable error with
the parse error as its reason, as botocore's own check of 200 answers makes it.

The columns are the raw values of the XML (entities decoded, URL encoding not undone): the
caller, which asked for `EncodingType=url`, undoes it (integrity.storage.s3).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree

import pyarrow as pa
import pyarrow.compute as pc
from botocore import handlers
from botocore.parsers import ResponseParserFactory, RestXMLParser

COLUMNS = "IntegrityListingColumns"
"""The key of a parsed ListObjectsV2 answer that holds its Contents as ListingColumns (botocore's
own `Contents` list is then absent)."""

UNREADABLE = "UnreadableListing"
"""The error code of a 200 answer whose body is not an XML document (retried as a 500 is)."""

_OUTPUT_SHAPE = "ListObjectsV2Output"
_W = rb"[ \t\n]*"  # XML white space; a carriage return sends the body to botocore
_SIMPLE = rb"<%s>[^<]*</%s>" + _W
_OWNER = (
    rb"(?:<Owner>"
    + _W
    + rb"(?:<ID>[^<]*</ID>"
    + _W
    + rb")?(?:<DisplayName>[^<]*</DisplayName>"
    + _W
    + rb")?</Owner>"
    + _W
    + rb")?"
)  # noqa: E501


def _simple(name: bytes, times: bytes = b"?") -> bytes:
    return rb"(?:" + (_SIMPLE % (name, name)) + rb")" + times


# One <Contents> element in the order S3 documents (and AWS, R2, MinIO, rclone and moto send),
# capturing Key, LastModified, ETag and Size; optional members are matched and skipped.
_CONTENTS = re.compile(
    rb"<Contents>" + _W + rb"<Key>([^<]*)</Key>" + _W
    + rb"<LastModified>([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?Z)</LastModified>"  # noqa: E501
    + _W + rb"<ETag>([^<]*)</ETag>" + _W
    + _simple(b"ChecksumAlgorithm", b"*") + _simple(b"ChecksumType")
    + rb"<Size>([0-9]{1,18})</Size>" + _W
    + _OWNER + _simple(b"StorageClass") + _OWNER
    + rb"(?:<RestoreStatus>" + _W + _simple(b"IsRestoreInProgress") + _simple(b"RestoreExpiryDate")
    + rb"</RestoreStatus>" + _W + rb")?"
    + rb"</Contents>"
)  # fmt: skip
_GROUPS = 4
# What this reader leaves to botocore: characters XML forbids or normalises (a carriage return
# becomes a line feed), U+FFFE/U+FFFF, ']]>' (forbidden in text), and comments, CDATA sections
# and document types ('<!'), inside which a <Contents> would be no element at all.
_CONTROL = bytes(range(0x00, 0x09)) + bytes(range(0x0B, 0x20))
# (each looked for only when its rarer first byte is there: '<' is everywhere)
_LEFT_TO_BOTOCORE = (
    (b"!", b"<!"),
    (b"]", b"]]>"),
    (b"\xef", b"\xef\xbf\xbe"),
    (b"\xef", b"\xef\xbf\xbf"),
)
_DECLARATION = re.compile(
    rb"<\?xml[ \t\n]+version=(['\"])1\.[0-9]\1"
    rb"(?:[ \t\n]+encoding=(['\"])(?i:utf-8)\2)?"
    rb"(?:[ \t\n]+standalone=(['\"])(?:yes|no)\3)?[ \t\n]*\?>"
)
_MARK_NAME = "IntegrityContents"
_MARK = f"<{_MARK_NAME}/>".encode()
# An '&' must start one of XML's five entities or a character reference.
_BAD_AMPERSAND = re.compile(rb"&(?!(?:amp|lt|gt|quot|apos|#[0-9]+|#x[0-9a-fA-F]+);)")
_CHARACTER_REFERENCE = re.compile(rb"&#(?:([0-9]+)|x([0-9a-fA-F]+));")
_ENTITY = re.compile(r"&(?:(amp|lt|gt|quot|apos)|#([0-9]+)|#x([0-9a-fA-F]+));")
_NAMED = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}


class NotHandled(Exception):
    """The body is outside what this reader understands exactly: botocore reads it."""


@dataclass(frozen=True)
class ListingColumns:
    """The Contents of one ListObjectsV2 answer, as Arrow arrays in the answer's order."""

    keys: pa.Array  # string, XML-decoded; still URL-encoded when the answer says EncodingType=url
    sizes: pa.Array  # int64
    etags: pa.Array  # string, as sent (quoted on AWS)
    last_modified: pa.Array  # timestamp[us, UTC]

    def __len__(self) -> int:
        return len(self.keys)


def _xml_char(code: int) -> str:
    if (
        code in (0x9, 0xA, 0xD)
        or 0x20 <= code <= 0xD7FF
        or 0xE000 <= code <= 0xFFFD
        or 0x10000 <= code <= 0x10FFFF
    ):
        return chr(code)
    raise NotHandled(f"character reference to #{code}, which XML forbids")


def _entity(match: re.Match[str]) -> str:
    name, decimal, hexadecimal = match.groups()
    if name:
        return _NAMED[name]
    return _xml_char(int(decimal) if decimal else int(hexadecimal, 16))


def unescape(text: str) -> str:
    """XML character data to text: the five predefined entities and character references (the
    body was checked to hold no other '&')."""
    return _ENTITY.sub(_entity, text)


def _check_references(body: bytes) -> None:
    """Every '&' in the body starts an entity XML knows, and every character reference names a
    character XML allows, in any member (those this reader skips included), as a parser checks."""
    if _BAD_AMPERSAND.search(body):
        raise NotHandled("an '&' that starts no XML entity")
    if b"&#" in body:
        for decimal, hexadecimal in _CHARACTER_REFERENCE.findall(body):
            _xml_char(int(decimal) if decimal else int(hexadecimal, 16))


def _strings(values: list[bytes], entities: bool) -> pa.Array:
    array = pa.array(values, pa.binary()).cast(pa.string())  # raises unless valid UTF-8
    if entities and pc.any(pc.match_substring(array, "&")).as_py():
        array = pa.array([unescape(v) if "&" in v else v for v in array.to_pylist()], pa.string())
    return array


def read_contents(body: bytes) -> tuple[ListingColumns, bytes]:
    """The Contents of a ListObjectsV2 body as columns, and the body without them (where the
    root's other members are); NotHandled when the body is not exactly what this reads."""
    if len(body.translate(None, _CONTROL)) != len(body) or any(
        rare in body and construct in body for rare, construct in _LEFT_TO_BOTOCORE
    ):
        raise NotHandled("a character or construct left to botocore")
    if body.find(b"<?", 1) != -1 or (body.startswith(b"<?") and not _DECLARATION.match(body)):
        raise NotHandled("a processing instruction, or an encoding other than UTF-8")
    parts = _CONTENTS.split(body)
    texts = parts[:: _GROUPS + 1]
    count = len(texts) - 1
    if not count:  # an empty page, or only CommonPrefixes: small, botocore reads it whole
        raise NotHandled("no Contents")
    if b"".join(texts[1:-1]).strip(b" \t\n"):
        raise NotHandled("something between the Contents elements")
    if body.count(b"<Contents") != count:
        raise NotHandled("a Contents element this reader does not match")
    entities = b"&" in body
    if entities:
        _check_references(body)
    head, tail = texts[0], texts[-1]
    # The Contents must be children of the root, where botocore reads them: a marker in their
    # place must be one, and the document around them must be well-formed.
    try:
        root = ElementTree.fromstring(head + _MARK + tail)
    except ElementTree.ParseError as exc:
        raise NotHandled(f"the document around the Contents: {exc}") from None
    if _local(root.tag) != "ListBucketResult" or not any(
        _local(child.tag) == _MARK_NAME for child in root
    ):
        raise NotHandled("Contents outside a ListBucketResult root")
    try:
        columns = ListingColumns(
            keys=_strings(parts[1 :: _GROUPS + 1], entities),
            last_modified=pa.array(parts[2 :: _GROUPS + 1], pa.binary())
            .cast(pa.string())
            .cast(pa.timestamp("us", tz="UTC")),
            etags=_strings(parts[3 :: _GROUPS + 1], entities),
            sizes=pa.array(parts[4 :: _GROUPS + 1], pa.binary()).cast(pa.string()).cast(pa.int64()),
        )
    except (pa.ArrowInvalid, NotHandled) as exc:  # not UTF-8, not a date, ...
        raise NotHandled(str(exc).splitlines()[0]) from None
    return columns, head + tail


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _xml_error(body: bytes) -> str | None:
    """Why a body is not an XML document, or None when it is one."""
    try:
        parser = ElementTree.XMLParser(target=ElementTree.TreeBuilder(), encoding="utf-8")
        parser.feed(body)
        parser.close()
    except ElementTree.ParseError as exc:
        return str(exc)
    return None


class ListingStats:
    """How many ListObjectsV2 answers were read into columns, and how many went to botocore."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.columnar = 0
        self.botocore = 0

    def count(self, columnar: bool) -> None:
        with self._lock:
            if columnar:
                self.columnar += 1
            else:
                self.botocore += 1


class ListingResponseParser(RestXMLParser):
    """botocore's REST-XML parser, with ListObjectsV2's successful bodies read into columns."""

    def __init__(self, stats: ListingStats, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._stats = stats

    def parse(self, response: dict[str, Any], shape: Any) -> Any:
        if shape is None or shape.name != _OUTPUT_SHAPE or response["status_code"] >= 301:
            return super().parse(response, shape)
        body = response["body"]
        try:
            columns, rest = read_contents(body)
        except NotHandled:
            self._stats.count(columnar=False)
            return self._parse_whole(response, shape)
        parsed = super().parse({**response, "body": rest}, shape)
        if "Contents" in parsed:  # cannot happen after the checks above; never mix two readings
            self._stats.count(columnar=False)
            return self._parse_whole(response, shape)
        self._stats.count(columnar=True)
        parsed[COLUMNS] = columns
        return parsed

    def _parse_whole(self, response: dict[str, Any], shape: Any) -> Any:
        """What botocore makes of the body: an answer, or (for a body that is no XML document or
        an <Error>) a 500, which is retried. botocore's `_handle_200_error`, taken off the
        client for this operation (install_listing_parser), made the same decision."""
        body = response["body"]
        if not handlers._looks_like_special_case_error(response["status_code"], body):
            return super().parse(response, shape)
        reason = _xml_error(body)
        parsed = super().parse({**response, "status_code": 500}, shape)
        if reason is not None:
            parsed["Error"] = {
                "Code": UNREADABLE,
                "Message": f"a 200 answer whose body is not an XML document ({reason})",
            }
        return parsed


class ListingParserFactory(ResponseParserFactory):
    """botocore's parser factory, with ListObjectsV2 answers read into columns."""

    def __init__(self) -> None:
        super().__init__()
        self.stats = ListingStats()

    def create_parser(self, protocol_name: str) -> Any:
        if protocol_name != "rest-xml":
            return super().create_parser(protocol_name)
        return ListingResponseParser(self.stats, **self._defaults)


def _handle_200_error_but_listing(operation_model: Any, response_dict: Any, **kwargs: Any) -> None:
    if operation_model.name != "ListObjectsV2":
        handlers._handle_200_error(operation_model, response_dict, **kwargs)


def install_listing_parser(core: Any) -> ListingParserFactory:
    """Make clients created from this botocore session read ListObjectsV2 into columns."""
    factory = ListingParserFactory()
    core.register_component("response_parser_factory", factory)
    return factory


def adopt_client(client: Any) -> Any:
    """On a client of such a session: botocore's check of 200 answers parses every body into a
    tree before the parser runs; for ListObjectsV2 the listing parser makes that check itself
    (on the bodies it cannot read), so the tree is not built twice."""
    events = client.meta.events
    events.unregister("before-parse.s3.*", handlers._handle_200_error)
    events.register_first("before-parse.s3.*", _handle_200_error_but_listing)
    return client


def listing_stats(client: Any) -> ListingStats | None:
    """The listing parser's counts for a client made by integrity.storage.s3.s3_client, else None."""
    return getattr(client, "_integrity_listing_stats", None)
