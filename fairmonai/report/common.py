"""Helpers shared by the report pages (cohort audit, pipeline report): figures saved atomically with the Agg
canvas, images embedded as data URIs, the base style sheet. Every page is one self-contained file."""

from __future__ import annotations

import base64
from pathlib import Path

from fairmonai.io.atomic import atomic_path

__all__ = ["BASE_CSS", "FAVICON_LINK", "png_data_uri", "save_figure"]

BASE_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f2f2f2}td.name,th.name{text-align:left}
tr.under{background:#fde2e1}tr.empty td{color:#b00020;font-weight:bold}
.summary td{text-align:left}img{max-width:100%;border:1px solid #eee}
.note{color:#555;font-size:.9em}
"""

# an empty inline icon: without it a browser asks the page's folder for favicon.ico and logs the miss as an error
FAVICON_LINK = '<link rel="icon" href="data:,">'


def png_data_uri(path: str | Path) -> str:
    """The PNG file at ``path`` as a ``data:image/png;base64,...`` URI (an image that travels inside the page)."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def save_figure(fig, path: str | Path, dpi: int = 100) -> None:
    """Save a matplotlib ``Figure`` as PNG at ``path`` atomically.

    The Agg canvas is attached directly: no pyplot, no global backend switch, works headless.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
