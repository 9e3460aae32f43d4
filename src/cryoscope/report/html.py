"""Self-contained HTML report: sections of text, figures (PNG embedded as base64 data URIs) and metric tables."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryoscope.errors import InputFormatError, MissingDataError
from cryoscope.io.atomic import atomic_path
from cryoscope.io.runinfo import to_jsonable

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_STYLE = """
body { font-family: sans-serif; max-width: 60em; margin: 2em auto; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { border-bottom: 1px solid #aaa; margin-top: 1.6em; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 100%; } figcaption { font-size: 0.9em; color: #444; max-width: 40em; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #bbb; padding: 0.2em 0.6em; }
th { background: #eee; text-align: left; } td.num { text-align: right; font-family: monospace; }
"""


@dataclass
class ReportFigure:
    """A PNG file and its caption."""

    path: str | Path
    caption: str = ""


@dataclass
class ReportSection:
    """A titled section: paragraphs of text, a metrics table, then figures."""

    title: str
    text: str = ""
    metrics: Mapping[str, Any] | None = None
    figures: Sequence[ReportFigure] = field(default_factory=list)


def _format_value(value: Any) -> str:
    """Numbers to 6 significant digits, lists comma-separated, non-finite numbers as 'n/a'."""
    v = to_jsonable(value)
    if isinstance(v, list):
        return ", ".join(_format_value(x) for x in v)
    if isinstance(v, float):
        return f"{v:.6g}"
    return "n/a" if v is None else str(v)


def metrics_table(metrics: Mapping[str, Any]) -> str:
    """HTML table with one row per metric (name, value)."""
    rows = "".join(
        f'<tr><td>{html.escape(str(k))}</td><td class="num">{html.escape(_format_value(v))}</td></tr>'
        for k, v in metrics.items()
    )
    return f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>"


def _embed_png(path: str | Path) -> str:
    p = Path(path)
    if not p.is_file():
        raise MissingDataError("figure file not found", p)
    data = p.read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise InputFormatError("figure is not a PNG file", p)
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def render_report(title: str, sections: Sequence[ReportSection], metrics: Mapping[str, Any] | None = None) -> str:
    """The report as one HTML string: title, an optional summary metrics table, then the sections."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if metrics:
        parts += ["<h2>Summary</h2>", metrics_table(metrics)]
    for sec in sections:
        parts.append(f"<section><h2>{html.escape(sec.title)}</h2>")
        parts += [f"<p>{html.escape(par)}</p>" for par in sec.text.split("\n\n") if par.strip()]
        if sec.metrics:
            parts.append(metrics_table(sec.metrics))
        for fig in sec.figures:
            alt = html.escape(fig.caption or Path(fig.path).name, quote=True)
            parts.append(
                f'<figure><img src="{_embed_png(fig.path)}" alt="{alt}">'
                f"<figcaption>{html.escape(fig.caption)}</figcaption></figure>"
            )
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(
    path: str | Path, title: str, sections: Sequence[ReportSection], metrics: Mapping[str, Any] | None = None
) -> Path:
    """Write a self-contained report.html atomically (figures embedded, no external files needed)."""
    text = render_report(title, sections, metrics)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
