#!/usr/bin/env bash
# Issue 4 acceptance (discrete heterogeneity), run by hand: the 70S map and the same map with one subunit lobe masked
# away, 50/50, 10,000 particles, SNR 0.05, defocus 1-3 µm, shifts ±3 px; two-class ab-initio, then classification
# from its two maps; class accuracy against the truth and each class map's FSC against its truth.
# Usage: benchmarks/acceptance_classes.sh OUT [N]
set -euo pipefail
OUT=${1:-benchmarks/out/acceptance_classes}
N=${2:-10000}
CS=${CRYOSCOPE:-cryoscope}
PY=${PYTHON:-python}
mkdir -p "$OUT"
$PY benchmarks/make_subunit_state.py tests/data/maps/ribosome70S_65.mrc 3.0 "$OUT/full.mrc" "$OUT/masked.mrc"
$CS simulate --map "$OUT/full.mrc" --map "$OUT/masked.mrc" --fractions 0.5,0.5 -n "$N" --snr 0.05 \
    --defocus-min 10000 --defocus-max 30000 --max-shift 3 --seed 12 -o "$OUT/sim"
STAR="$OUT/sim/particles.star"; REFS="$OUT/full.mrc,$OUT/masked.mrc"
# per-class oracle: each class's particles reconstructed with their true poses (the bar for the class maps)
$PY - "$OUT" <<'PY'
import sys, starfile
out = sys.argv[1]
d, g = starfile.read(f"{out}/sim/particles.star"), starfile.read(f"{out}/sim/ground_truth.star")
cls = (g["particles"] if isinstance(g, dict) else g)["rlnClassNumber"].to_numpy()
for k in (1, 2):
    starfile.write({"optics": d["optics"], "particles": d["particles"][cls == k]}, f"{out}/sim/oracle_class{k}.star", overwrite=True)
PY
for k in 1 2; do $CS reconstruct "$OUT/sim/oracle_class$k.star" -o "$OUT/oracle$k" --reference "$OUT/sim/truth_$k.mrc" --seed 1; done
$CS abinitio "$STAR" -o "$OUT/abinitio" -K 2 --iterations 100 --reference "$REFS" --truth-star "$STAR" --seed 1 --no-progress
$CS classify "$STAR" --initial "$OUT/abinitio/class001.mrc,$OUT/abinitio/class002.mrc" -o "$OUT/classify" -K 2 \
    --iterations 5 --global-min-step 15 --initial-lowpass 30 --reference "$REFS" --truth-star "$STAR" --seed 1 --no-progress
$PY - "$OUT" <<'PY'
import sys, starfile, numpy as np, json
out = sys.argv[1]
truth = starfile.read(f"{out}/sim/ground_truth.star")["rlnClassNumber"].to_numpy()
for stage in ("abinitio", "classify"):
    t = starfile.read(f"{out}/{stage}/particles.star")
    got = (t["particles"] if isinstance(t, dict) else t)["rlnClassNumber"].to_numpy()
    acc = max((got == truth).mean(), (got != truth).mean())
    m = json.load(open(f"{out}/{stage}/metrics.json"))
    fsc = {k: round(v, 3) for k, v in m.items() if k.endswith("truth_fsc_0.5_cycles_per_pixel")}
    print(stage, "class accuracy", round(acc, 4), fsc, "seconds", round(m["seconds"]))
PY
