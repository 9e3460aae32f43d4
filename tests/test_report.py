"""Report figures (valid PNGs of the expected size) and the self-contained HTML report."""

from __future__ import annotations

import base64
import struct
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from cryoscope.errors import InputFormatError, InvalidValueError
from cryoscope.geometry.rotations import euler_to_matrix
from cryoscope.geometry.sampling import random_rotations
from cryoscope.report.html import ReportFigure, ReportSection, write_report
from cryoscope.report.plots import (
    direction_angles,
    plot_angular_distribution,
    plot_central_slices,
    plot_fsc,
    plot_montage,
    plot_projections,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def figures(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("figs")
    n = 24
    c = torch.arange(n, dtype=torch.float32) - n // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    vol = torch.exp(-((x - 3) ** 2 + y**2 + (z + 2) ** 2) / 8)
    freq = torch.arange(n // 2 + 1) / n
    return {
        "fsc": plot_fsc(out / "fsc.png", {"half maps": torch.exp(-((freq / 0.25) ** 2)), "vs truth": 1 - 2 * freq}, n, 1.5),
        "angles": plot_angular_distribution(out / "angles.png", random_rotations(500, torch.Generator().manual_seed(0))),
        "slices": plot_central_slices(out / "slices.png", vol),
        "projections": plot_projections(out / "proj.png", vol),
        "montage": plot_montage(out / "montage.png", torch.randn(10, 16, 16), k=6, ncols=3),
    }


def test_plots_are_png_files_of_the_requested_size(figures):
    sizes = {name: png_size(path) for name, path in figures.items()}
    assert sizes["fsc"] == (640, 420)  # figsize 6.4 x 4.2 in at 100 dpi
    assert sizes["angles"] == (700, 380)
    assert sizes["slices"] == sizes["projections"] == (900, 340)
    assert sizes["montage"] == (480, 360)  # 3 x 2 panels of 1.6 in, plus the title band
    assert not list(figures["fsc"].parent.glob(".*tmp*"))


def test_viewing_direction_angles_follow_relion_euler():
    R = euler_to_matrix(torch.tensor([[30.0, 60.0, 10.0], [-120.0, 150.0, 80.0]], dtype=torch.float64))
    rot, tilt = direction_angles(R)
    assert np.allclose(rot, [30.0, -120.0]) and np.allclose(tilt, [60.0, 150.0])


def test_plot_input_errors(tmp_path):
    with pytest.raises(InvalidValueError):
        plot_central_slices(tmp_path / "x.png", torch.zeros(4, 4))
    with pytest.raises(InvalidValueError):
        plot_fsc(tmp_path / "x.png", {}, 16)
    with pytest.raises(InvalidValueError):
        plot_montage(tmp_path / "x.png", torch.zeros(0, 4, 4))
    assert not list(tmp_path.iterdir())


class _StrictParser(HTMLParser):
    """Collects img sources and text; checks that non-void tags are properly nested and closed."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.images: list[str] = []
        self.text: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"unbalanced </{tag}>")

    def handle_data(self, data):
        self.text.append(data)


def test_html_report_embeds_figures_and_metrics(figures, tmp_path):
    sections = [
        ReportSection("Resolution", "FSC between half maps.\n\nSecond paragraph.", {"FSC 0.143 (Å)": 3.25},
                      [ReportFigure(figures["fsc"], "FSC <curves>"), ReportFigure(figures["slices"], "slices")]),
        ReportSection("Poses", figures=[ReportFigure(figures["angles"], "angular distribution")]),
    ]
    path = write_report(tmp_path / "report.html", "Run <1> & co", sections, {"particles": 5000, "cc": 0.987654321})
    parser = _StrictParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    assert not parser.errors and not parser.stack
    assert len(parser.images) == 3
    for src, name in zip(parser.images, ["fsc", "slices", "angles"]):
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == figures[name].read_bytes()
    text = " ".join(parser.text)
    for expected in ("Run <1> & co", "5000", "0.987654", "3.25", "FSC <curves>", "Second paragraph."):
        assert expected in text
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_html_report_rejects_missing_or_non_png_figures(tmp_path):
    (tmp_path / "fake.png").write_text("not a png")
    with pytest.raises(InputFormatError):
        write_report(tmp_path / "report.html", "t", [ReportSection("s", figures=[ReportFigure(tmp_path / "fake.png")])])
    assert not (tmp_path / "report.html").exists()
