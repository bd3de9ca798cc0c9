"""Pixels: uploaded bytes into pages, pages into Deep Zoom pyramids, images into staged JPEGs.

The pyvips-binary wheels ship libvips without a PDF loader, so PDF pages are rendered with
pypdfium2 and handed to pyvips as pixels; a libvips that has its own `pdfload` renders them
itself. Every bad input raises BadInput with one line a person can act on.
"""

from __future__ import annotations

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


def is_pdf(data: bytes) -> bool:
    """PDFs may carry a few bytes of junk before the header; readers look at the first 1 KiB."""
    return PDF_MAGIC in data[:1024]


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


def open_pdf(data: bytes, *, dpi: float, max_pixels: int) -> PdfDocument:
    """Open and validate a PDF before anything is written: readable, not encrypted, has pages."""
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


def load_image(data: bytes, *, max_pixels: int) -> Any:
    """Decode a whole image (so truncation shows now, not halfway through the tiles)."""
    import pyvips

    if not data:
        raise BadInput("the object is empty (0 bytes)")
    try:
        image = pyvips.Image.new_from_buffer(data, "", access="random", fail_on="truncated")
    except pyvips.Error:
        raise BadInput("not a PDF or an image format libvips can read") from None
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
