"""Merge benchmarks/out/peers.json and benchmarks/out/ours.json into markdown tables (benchmarks/out/compare.md; RESULTS.md is kept by hand).

Usage: python benchmarks/compare.py [--peers out/peers*.json ...] [--ours out/ours*.json ...] [--oracle out/oracle.json]
                                    [--ours-oracle out/ours_oracle.json ...] [--out out/compare.md]
Several --peers / --ours files (repeated runs, peers and ours back to back) are merged by keeping each
measurement's fastest run. Sections: the peers' own numbers; ratios and accuracy against cryoscope; the
ASPIRE oracle and, with --ours-oracle, cryoscope on the same data shell by shell.
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
    ("project_disc", "aspire", "project"),
    ("project_kb4", "aspire", "project"),
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


def _index(paths: list[Path]) -> tuple[dict, dict]:
    """Machine of the first file and, per (tool, op, box), the row of the fastest run."""
    machine, rows = None, {}
    for path in paths:
        data = json.loads(path.read_text())
        machine = machine or data["machine"]
        for r in data["results"]:
            key = (r["tool"], r["op"], r["box"])
            if "error" not in r and (key not in rows or r["images_per_s"] > rows[key]["images_per_s"]):
                rows[key] = r
    return machine, rows


def _acc(r: dict) -> str:
    a = r.get("accuracy")
    if not a:
        return "-"
    text = f"{a['rel_error']:.2g}"
    return text + (f" / {a['fsc_0.5']:.3f}" if "fsc_0.5" in a else "")


def peer_table(peers_json: Path) -> str:
    """Markdown: every peer measurement (images/s, peak RSS, batch, note)."""
    machine, rows = _index(peers_json)
    lines = [
        f"Machine: {json.dumps(machine)}\n",
        "| tool | operation | box | batch | img/s (fastest call) | img/s (median call) | peak RSS MB | error / FSC 0.5 | convention found | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (tool, op, box), r in sorted(rows.items()):
        median = r.get("images_per_s_median", float("nan"))
        lines.append(
            f"| {tool} | {op} | {box} | {r['batch']} | {r['images_per_s']:.1f} | {median:.1f} | {r['peak_rss_MB']:.0f} | "
            f"{_acc(r)} | {r.get('accuracy', {}).get('convention', '')} | {r['note']} |"
        )
    return "\n".join(lines) + "\n"


def table(peers_json: Path, ours_json: Path) -> str:
    """Markdown: one row per (operation, box, peer) with images/s, peak RSS and the ratio."""
    peer_machine, peers = _index(peers_json)
    our_machine, ours = _index(ours_json)
    lines = [
        "| operation (ours vs peer) | box | cryoscope img/s | peer img/s | ratio | cryoscope error / FSC 0.5 | peer error / FSC 0.5 | cryoscope peak RSS MB | peer peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
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
                f"{ratio:.2f} | {_acc(a)} | {_acc(b)} | {a['peak_rss_MB']:.0f} | {b['peak_rss_MB']:.0f} |"
            )
    head = (
        f"Peers: {json.dumps(peer_machine)}  \nOurs: {json.dumps(our_machine)}  \n"
        "img/s from the fastest of >= 3 timed calls (the machine may be shared); ratio = cryoscope img/s ÷ peer img/s. "
        "Peak RSS is per measurement process (includes imports). Error: relative L2 error (after the best scalar "
        "fit) against benchmarks/accuracy.py's analytic reference (projections: exact line integrals of a band-limited "
        "Gaussian-blob map; backproject: its exact adjoint; direct / reconstruct: the map from the batch's exact "
        "projections vs the blob map, then its FSC 0.5 crossing in cycles/pixel).\n\n"
    )
    return head + "\n".join(lines) + "\n"


def oracle_section(aspire_json: Path, ours_jsons: list[Path]) -> str:
    """ASPIRE's oracle and ours on the same data: summary rows, then the FSC against the truth per shell."""
    runs = [("ASPIRE MeanEstimator", json.loads(aspire_json.read_text()))]
    runs += [(f"cryoscope reconstruct_known_poses ({json.loads(p.read_text())['solver']})", json.loads(p.read_text()))
             for p in ours_jsons]
    o = runs[0][1]
    lines = [
        "\n## Known-pose reconstruction vs the ASPIRE oracle (true poses and CTF)\n",
        f"{o['star']}: {o['n_images']} images, box {o['box']}, {o['pixel_size_A']} Å/px. FSC of each map against the truth "
        "(shells round(|k|), the same code for both).\n",
        "| method | seconds | peak RSS MB | FSC 0.5 (cycles/px) | FSC 0.143 (cycles/px) | real-space corr |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in runs:
        lines.append(f"| {name} | {r['seconds']} | {r['peak_rss_MB']} | {r['fsc_0.5_cycles_per_pixel']} | "
                     f"{r['fsc_0.143_cycles_per_pixel']} | {r['real_space_corr']} |")
    lines += ["", "| shell (cycles/px) | " + " | ".join(name for name, _ in runs) + " |", "|---" * (len(runs) + 1) + "|"]
    for k, v in o["fsc"].items():
        lines.append(f"| {k} | {v} | " + " | ".join(str(r["fsc"][k]) for _, r in runs[1:]) + (" |" if len(runs) > 1 else "|"))
    for name, r in runs[1:]:
        worse = [k for k, v in o["fsc"].items() if r["fsc"][k] < v]
        lines.append(f"\n{name}: FSC >= ASPIRE's at {len(o['fsc']) - len(worse)} of {len(o['fsc'])} shells"
                     + (f"; below at {', '.join(worse)}." if worse else "."))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--peers", type=Path, nargs="+", default=[HERE / "out" / "peers.json"])
    parser.add_argument("--ours", type=Path, nargs="+", default=[HERE / "out" / "ours.json"])
    parser.add_argument("--ours-oracle", type=Path, nargs="*", default=[], help="ours_oracle.py --out (one per solver)")
    parser.add_argument("--oracle", type=Path, default=HERE / "out" / "oracle.json", help="aspire_oracle.py --out")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "compare.md")
    args = parser.parse_args()
    text = "# Benchmarks: cryoscope vs peers (CPU)\n\n## Peers\n\n" + peer_table(args.peers)
    if all(p.exists() for p in args.ours):
        text += "\n## cryoscope vs peers\n\n" + table(args.peers, args.ours) + NOTES
    if args.oracle.exists():
        text += oracle_section(args.oracle, args.ours_oracle)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
