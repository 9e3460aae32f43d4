"""Merge benchmarks/out/peers.json and benchmarks/out/ours.json into a markdown table (benchmarks/RESULTS.md).

Usage: python benchmarks/compare.py [--peers out/peers.json] [--ours out/ours.json] [--oracle out/oracle.json] [--out RESULTS.md]
Sections: the peers' own numbers; ratios against cryoscope when ours.json exists; the ASPIRE oracle when oracle.json exists.
Standard library only. Ratio = cryoscope images/s ÷ peer images/s (> 1: cryoscope is faster).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).parent
# (our op, peer, peer op): which measurements are the same job.
PAIRS = [
    ("project", "aspire", "project"),
    ("project_slice", "cryodrgn", "project"),
    ("backproject", "aspire", "backproject"),
    ("direct", "cryodrgn", "backproject"),
    ("reconstruct", "aspire", "reconstruct"),
]


NOTES = """
Notes: batches are 256 / 64 / 8 images at box 64 / 128 / 256, so fixed per-call costs weigh most at 256.
ASPIRE's project/backproject pay a 3-D NUFFT of the map (2x oversampled grid) on every call, and
cryoscope's `project`/`backproject` pay the padded (2x) 3-D FFT of the map every call (at 256 about 4 s
and ~5 GB peak RSS); `project_slice` precomputes it, as cryoDRGN's projector precomputes its Hartley map.
cryoDRGN's `VolumeExplicit` copies the whole map once per image inside `grid_sample`. Timings on a
shared machine vary between runs (single calls up to 8x); see benchmarks/README.md.
"""


def _index(path: Path) -> tuple[dict, dict]:
    data = json.loads(path.read_text())
    rows = {(r["tool"], r["op"], r["box"]): r for r in data["results"] if "error" not in r}
    return data["machine"], rows


def peer_table(peers_json: Path) -> str:
    """Markdown: every peer measurement (images/s, peak RSS, batch, note)."""
    machine, rows = _index(peers_json)
    lines = [
        f"Machine: {json.dumps(machine)}\n",
        "| tool | operation | box | batch | img/s (fastest call) | img/s (median call) | peak RSS MB | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (tool, op, box), r in sorted(rows.items()):
        median = r.get("images_per_s_median", float("nan"))
        lines.append(
            f"| {tool} | {op} | {box} | {r['batch']} | {r['images_per_s']:.1f} | {median:.1f} | {r['peak_rss_MB']:.0f} | {r['note']} |"
        )
    return "\n".join(lines) + "\n"


def table(peers_json: Path, ours_json: Path) -> str:
    """Markdown: one row per (operation, box, peer) with images/s, peak RSS and the ratio."""
    peer_machine, peers = _index(peers_json)
    our_machine, ours = _index(ours_json)
    lines = [
        "| operation (ours vs peer) | box | cryoscope img/s | peer img/s | ratio | cryoscope peak RSS MB | peer peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    boxes = sorted({k[2] for k in ours} | {k[2] for k in peers})
    for our_op, peer, peer_op in PAIRS:
        for box in boxes:
            a, b = ours.get(("cryoscope", our_op, box)), peers.get((peer, peer_op, box))
            if a is None or b is None:
                continue
            ratio = a["images_per_s"] / b["images_per_s"]
            lines.append(
                f"| {our_op} vs {peer} {peer_op} | {box} | {a['images_per_s']:.1f} | {b['images_per_s']:.1f} | "
                f"{ratio:.2f} | {a['peak_rss_MB']:.0f} | {b['peak_rss_MB']:.0f} |"
            )
    head = (
        f"Peers: {json.dumps(peer_machine)}  \nOurs: {json.dumps(our_machine)}  \n"
        "img/s from the fastest of >= 3 timed calls (the machine may be shared); ratio = cryoscope img/s ÷ peer img/s. "
        "Peak RSS is per measurement process (includes imports).\n\n"
    )
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--peers", type=Path, default=HERE / "out" / "peers.json")
    parser.add_argument("--ours", type=Path, default=HERE / "out" / "ours.json")
    parser.add_argument("--oracle", type=Path, default=HERE / "out" / "oracle.json", help="aspire_oracle.py --out")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    text = "# Benchmarks: cryoscope vs peers (CPU)\n\n## Peers\n\n" + peer_table(args.peers)
    if args.ours.exists():
        text += "\n## cryoscope vs peers\n\n" + table(args.peers, args.ours) + NOTES
    if args.oracle.exists():
        o = json.loads(args.oracle.read_text())
        text += (
            "\n## ASPIRE oracle (true poses and CTF)\n\n"
            f"{o['star']}: {o['n_images']} images, box {o['box']}, {o['pixel_size_A']} Å/px, MeanEstimator maxiter "
            f"{o['maxiter']}: FSC vs truth 0.5 at {o['fsc_0.5_cycles_per_pixel']} cycles/pixel, 0.143 at "
            f"{o['fsc_0.143_cycles_per_pixel']}, real-space correlation {o['real_space_corr']}, {o['seconds']} s, "
            f"peak RSS {o['peak_rss_MB']} MB.\n"
        )
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
