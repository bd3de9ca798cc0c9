"""Pixels: uploaded bytes into pages, pages into Deep Zoom pyramids, images into staged JPEGs.

The pyvips-binary wheels ship libvips without a PDF loader, so PDF pages are rendered with
pypdfium2 and handed to pyvips as pixels; a libvips that has its own `pdfload` renders them
itself. Every bad input raises BadInput with one line a person can act on.
"""

from __future__ import annotations

import codecs
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from integrity.errors import IntegrityError

TILE_SIZE = 256
TILE_OVERLAP = 1
TILE_SUFFIX = ".jpg"
TILE_QUALITY = 85
STAGED_QUALITY = 85
PDF_MAGIC = b"%PDF-"
PAGE_OBJECT = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")


class BadInput(IntegrityError):
    """The object cannot be processed as it is (truncated, not an image, encrypted, empty, too big)."""


def has_pdfload() -> bool:
    """Whether the installed libvips can load PDFs itself (pyvips-binary cannot)."""
    import pyvips

    return bool(pyvips.type_find("VipsForeign", "pdfload_buffer"))


PDF_WINDOW = 1024
"""PDF readers accept junk before `%PDF-` (a mail or print header) within the first 1 KiB."""

_IMAGE_MAGIC: tuple[tuple[bytes, str, str | None], ...] = (
    # (leading bytes, format name, libvips buffer loader)
    (b"\xff\xd8\xff", "JPEG", "jpegload_buffer"),
    (b"\x89PNG\r\n\x1a\n", "PNG", "pngload_buffer"),
    (b"GIF87a", "GIF", "gifload_buffer"),
    (b"GIF89a", "GIF", "gifload_buffer"),
    (b"II*\x00", "TIFF", "tiffload_buffer"),
    (b"MM\x00*", "TIFF", "tiffload_buffer"),
    (b"II+\x00", "BigTIFF", "tiffload_buffer"),
    (b"MM\x00+", "BigTIFF", "tiffload_buffer"),
    (b"\xff\x0a", "JPEG XL", "jxlload_buffer"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL", "jxlload_buffer"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000", "jp2kload_buffer"),
    (b"\xff\x4f\xff\x51", "JPEG 2000", "jp2kload_buffer"),
    (b"8BPS", "Photoshop (PSD)", None),
    (b"#?RADIANCE", "Radiance HDR", None),
)
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
_OTHER_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a ZIP archive (or a .docx, .xlsx or other zipped file)"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an OLE2 file (e.g. .doc, .xls, .msg)"),
    (b"AC10", "an AutoCAD DWG drawing"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"%!PS", "a PostScript file"),
    (b"\x7fELF", "an ELF executable"),
)


@dataclass(frozen=True)
class Format:
    """What the leading bytes say an object is, and which decoder it goes to.

    `kind` is "pdf", "image" or "unknown"; `loader` is the libvips loader an image goes to
    (None: this libvips has none for it); `name` is what a person calls the format.
    """

    kind: str
    name: str
    loader: str | None = None


def _vips_sniff(data: bytes) -> str | None:
    """The loader libvips itself picks from the leading bytes (None: no loader claims them)."""
    import pyvips

    pointer = pyvips.vips_lib.vips_foreign_find_load_buffer(data, len(data))
    return None if pointer == pyvips.ffi.NULL else pyvips.ffi.string(pointer).decode()


def _is_pdf_loader(loader: str) -> bool:
    name = loader.lower().removeprefix("vipsforeignload")
    return name.startswith(("pdf", "poppler"))


def _image(name: str, operation: str | None, data: bytes) -> Format:
    """An image for its own loader; without it (pyvips-binary has no jxl, jp2k or magick), any
    image loader libvips' sniffing finds (a libvips with magick reads PSD), else none."""
    import pyvips

    if operation and pyvips.type_find("VipsForeign", operation):
        return Format("image", name, operation)
    sniffed = _vips_sniff(data)
    return Format("image", name, sniffed if sniffed and not _is_pdf_loader(sniffed) else None)


def _describe_unknown(head: bytes) -> str:
    for magic, name in _OTHER_MAGIC:
        if head.startswith(magic):
            return name
    if head[4:8] == b"ftyp":
        brand = head[8:12].decode("ascii", "replace").strip()
        return f"an ISO media file (brand {brand!r}: a video?)"
    try:  # incremental: a character cut at the end of the sample is not an error
        text = codecs.getincrementaldecoder("utf-8")().decode(head[:512], final=False)
    except UnicodeDecodeError:
        text = ""
    if text and all(ch.isprintable() or ch in "\t\r\n\f" for ch in text):
        lowered = text.lstrip("\ufeff \t\r\n").lower()
        if lowered.startswith(("<!doctype html", "<html")):
            return "an HTML page"
        if lowered.startswith("<?xml") or lowered.startswith("<"):
            return "an XML document (not SVG)"
        return "plain text"
    return f"in an unknown format (first bytes {head[:8].hex(' ')})"


def sniff(data: bytes) -> Format:
    """The format the leading bytes name, decided the way libvips decides, before PDF readers.

    A known image signature at offset 0 wins (a JPEG may carry `%PDF-` in a comment); then the
    loader libvips' own sniffing picks (SVG, and anything else this libvips reads); then a PDF
    header within the first 1 KiB, as PDF readers accept; anything else is named and refused.
    """
    head = data[:PDF_WINDOW]
    for magic, name, operation in _IMAGE_MAGIC:
        if head.startswith(magic):
            return _image(name, operation, data)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _image("WebP", "webpload_buffer", data)
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS | _AVIF_BRANDS:
        return _image("AVIF" if head[8:12] in _AVIF_BRANDS else "HEIF", "heifload_buffer", data)
    if head.startswith(PDF_MAGIC):
        return Format("pdf", "PDF")
    loader = _vips_sniff(data)
    if loader is not None:
        if _is_pdf_loader(loader):
            return Format("pdf", "PDF")
        name = loader.removeprefix("VipsForeignLoad").removesuffix("Buffer")
        return Format("image", "SVG" if name == "Svg" else name, loader)
    if PDF_MAGIC in head:
        return Format("pdf", "PDF")
    return Format("unknown", _describe_unknown(head))


def _flatten(image: Any) -> Any:
    """RGB(A)/grey, any depth, into 8-bit sRGB on white: what JPEG tiles can hold."""
    if image.hasalpha():
        image = image.flatten(background=[255] * (image.bands - 1))
    if image.interpretation not in ("srgb", "b-w") or image.format != "uchar":
        image = image.colourspace("srgb")
    if image.format != "uchar":
        image = image.cast("uchar")
    return image


@dataclass
class PdfDocument:
    """An opened PDF: its page count, and a renderer for one page at a time."""

    data: bytes
    dpi: float
    max_pixels: int
    _pdf: Any = None

    @property
    def pages(self) -> int:
        return len(self._pdf)

    def check_size(self, index: int) -> None:
        """Refuse a page that would render to more pixels than allowed (a decompression bomb)."""
        width_pt, height_pt = self._pdf[index].get_size()
        scale = self.dpi / 72
        pixels = math.ceil(width_pt * scale) * math.ceil(height_pt * scale)
        if pixels > self.max_pixels:
            raise BadInput(
                f"page {index + 1} would render to {pixels:,} pixels at {self.dpi:g} dpi, "
                f"over the limit of {self.max_pixels:,}: lower the dpi or raise max_pixels"
            )

    def render(self, index: int) -> Any:
        """Page `index` (0-based) as an 8-bit sRGB pyvips image held in memory."""
        import pyvips

        self.check_size(index)
        scale = self.dpi / 72
        if has_pdfload():
            try:
                image = pyvips.Image.pdfload_buffer(self.data, page=index, dpi=self.dpi)
            except pyvips.Error as exc:
                raise BadInput(
                    f"page {index + 1} cannot be rendered: {_vips_reason(exc)}"
                ) from None
            return _flatten(image).copy_memory()
        import pypdfium2 as pdfium

        try:
            bitmap = self._pdf[index].render(scale=scale, rev_byteorder=True)
        except pdfium.PdfiumError as exc:
            raise BadInput(f"page {index + 1} cannot be rendered: {exc}") from None
        array = bitmap.to_numpy()
        height, width = array.shape[:2]
        bands = 1 if array.ndim == 2 else array.shape[2]
        pixels = array.tobytes()  # contiguous: pdfium pads rows to 4 bytes
        borrowed = pyvips.Image.new_from_memory(pixels, width, height, bands, "uchar")
        # new_from_memory borrows `pixels` (only this Python wrapper keeps it alive), and
        # copy_memory of an image already in memory returns that same image: render through a
        # copy into memory libvips owns while `pixels` is still referenced here.
        interpretation = "srgb" if bands >= 3 else "b-w"
        owned = _flatten(borrowed.copy(interpretation=interpretation)).copy_memory()
        del borrowed, pixels
        return owned

    def close(self) -> None:
        if self._pdf is not None:
            self._pdf.close()


def open_pdf(data: bytes, *, dpi: float, max_pixels: int, max_pages: int) -> PdfDocument:
    """Open and validate a PDF before anything is written: readable, not encrypted, has pages,
    no more pages than max_pages, and no page over max_pixels."""
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        reason = str(exc)
        if "password" in reason.lower():
            raise BadInput("the PDF is encrypted (password protected)") from None
        if not PAGE_OBJECT.search(data):
            raise BadInput("the PDF has no pages") from None
        detail = reason.rsplit("PDFium: ", 1)[-1].rstrip(").")
        raise BadInput(f"the PDF cannot be read ({detail}): truncated or damaged?") from None
    document = PdfDocument(data, dpi, max_pixels, pdf)
    try:
        if document.pages == 0:
            raise BadInput("the PDF has no pages")
        if document.pages > max_pages:
            raise BadInput(
                f"the PDF has {document.pages:,} pages, over the limit of {max_pages:,} (max_pages)"
            )
        for index in range(document.pages):
            document.check_size(index)
    except BaseException:
        document.close()
        raise
    return document


def _vips_reason(exc: Exception) -> str:
    """libvips' messages span lines and repeat; keep the first informative one."""
    lines = [line.strip() for line in str(getattr(exc, "detail", "") or exc).splitlines()]
    lines = [line for line in lines if line and not line.startswith("VipsForeignLoad")] or lines
    return (lines[0] if lines else "unknown error")[:200]


def load_image(data: bytes, fmt: Format, *, max_pixels: int) -> Any:
    """Decode a whole image with its format's loader (so truncation shows now, not mid-tiles)."""
    import pyvips

    if fmt.loader is None:
        raise BadInput(f"the object is in {fmt.name} format, which this libvips cannot read")
    try:
        image = pyvips.Operation.call(
            fmt.loader, data, string_options="", access="random", fail_on="truncated"
        )
    except pyvips.Error as exc:
        raise BadInput(f"the {fmt.name} image cannot be read: {_vips_reason(exc)}") from None
    if image.width * image.height > max_pixels:
        raise BadInput(
            f"the image has {image.width * image.height:,} pixels ({image.width}x{image.height}), "
            f"over the limit of {max_pixels:,}"
        )
    try:
        return _flatten(image.autorot()).copy_memory()
    except pyvips.Error as exc:
        raise BadInput(f"the image cannot be decoded (truncated?): {_vips_reason(exc)}") from None


def staged_jpeg(image: Any, max_side: int) -> tuple[bytes, int, int]:
    """A JPEG whose longest side is at most max_side (never enlarged): (bytes, width, height)."""
    small = image.thumbnail_image(max_side, height=max_side, size="down")
    return small.jpegsave_buffer(Q=STAGED_QUALITY, keep="none"), small.width, small.height


def deep_zoom(image: Any, sheet: str, workdir: Path) -> list[tuple[str, Path]]:
    """A Deep Zoom pyramid on disk: [(path relative to the tiles prefix, file)], the .dzi last.

    Tile size 256, overlap 1, JPEG tiles, levels down to one pixel, blank tiles kept, so the
    tile count follows from the .dzi geometry alone (see expected_tiles).
    """
    image.dzsave(
        str(workdir / sheet),
        tile_size=TILE_SIZE,
        overlap=TILE_OVERLAP,
        suffix=f"{TILE_SUFFIX}[Q={TILE_QUALITY}]",
        depth="onepixel",
        skip_blanks=-1,
    )
    files = [
        (path.relative_to(workdir).as_posix(), path)
        for path in sorted((workdir / f"{sheet}_files").rglob(f"*{TILE_SUFFIX}"))
    ]
    files.append((f"{sheet}.dzi", workdir / f"{sheet}.dzi"))
    return files


@dataclass(frozen=True)
class DziGeometry:
    width: int
    height: int
    tile_size: int
    overlap: int
    format: str


def parse_dzi(data: bytes) -> DziGeometry:
    """The geometry a Deep Zoom descriptor declares."""
    root = ET.fromstring(data)
    size = next(el for el in root.iter() if el.tag.endswith("Size"))
    return DziGeometry(
        width=int(size.get("Width")),
        height=int(size.get("Height")),
        tile_size=int(root.get("TileSize")),
        overlap=int(root.get("Overlap")),
        format=root.get("Format"),
    )


def level_sizes(width: int, height: int) -> list[tuple[int, int]]:
    """Sizes of levels 0 (one pixel) .. max (full size): each halves the next, rounding up."""
    max_level = math.ceil(math.log2(max(width, height))) if max(width, height) > 1 else 0
    return [
        (math.ceil(width / 2 ** (max_level - level)), math.ceil(height / 2 ** (max_level - level)))
        for level in range(max_level + 1)
    ]


def expected_tiles(geometry: DziGeometry) -> dict[int, int]:
    """{level: tile count} a complete pyramid of this geometry holds."""
    return {
        level: math.ceil(w / geometry.tile_size) * math.ceil(h / geometry.tile_size)
        for level, (w, h) in enumerate(level_sizes(geometry.width, geometry.height))
    }
