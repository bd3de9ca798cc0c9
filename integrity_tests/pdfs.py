"""Real PDFs made offline with pdfium: pages of given sizes with drawn rectangles on them."""

from __future__ import annotations

import io
import random

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c


def _rect(
    page: pdfium.PdfPage, x: float, y: float, w: float, h: float, rgb: tuple[int, ...]
) -> None:
    obj = pdfium_c.FPDFPageObj_CreateNewRect(x, y, w, h)
    pdfium_c.FPDFPageObj_SetFillColor(obj, *rgb, 255)
    pdfium_c.FPDFPageObj_SetStrokeColor(obj, 20, 30, 60, 255)
    pdfium_c.FPDFPageObj_SetStrokeWidth(obj, 1.5)
    pdfium_c.FPDFPath_SetDrawMode(obj, pdfium_c.FPDF_FILLMODE_ALTERNATE, True)
    pdfium_c.FPDFPage_InsertObject(page.raw, obj)


def make_pdf(sizes: list[tuple[float, float]], seed: int = 7) -> bytes:
    """One page per (width, height) in points, each with a frame and a few coloured rooms."""
    rng = random.Random(seed)
    pdf = pdfium.PdfDocument.new()
    for width, height in sizes:
        page = pdf.new_page(width, height)
        _rect(page, 4, 4, width - 8, height - 8, (250, 250, 245))
        for _ in range(5):
            w, h = rng.uniform(20, width / 3), rng.uniform(20, height / 3)
            x, y = rng.uniform(8, width - w - 8), rng.uniform(8, height - h - 8)
            _rect(page, x, y, w, h, (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
        pdfium_c.FPDFPage_GenerateContent(page.raw)
    out = io.BytesIO()
    pdf.save(out)
    pdf.close()
    return out.getvalue()
