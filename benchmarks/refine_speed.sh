#!/usr/bin/env bash
# Refinement speed, run by hand: 1,000 ribosome particles (box 64, 3 Å/px, SNR 0.05, defocus 1-3 µm, shifts ±3 px),
# then from the known-pose map (a) 3 local iterations from the true poses (healpix order 4, σ-sized grids) and
# (b) 2 global iterations (30°, 15°); prints each run's seconds from its metrics.json.
# Usage: benchmarks/refine_speed.sh OUT   (env CRYOSCOPE: the command to time, e.g. an older checkout's)
set -euo pipefail
OUT=${1:-benchmarks/out/refine_speed}
CS=${CRYOSCOPE:-cryoscope}
PY=${PYTHON:-python}
mkdir -p "$OUT"
[ -f "$OUT/sim/particles.star" ] || $CS simulate --map tests/data/maps/ribosome70S_65.mrc --map-voxel-size 3.0 --box 64 -n 1000 \
    --snr 0.05 --defocus-min 10000 --defocus-max 30000 --max-shift 3 --seed 11 -o "$OUT/sim" --no-progress
[ -f "$OUT/oracle/map.mrc" ] || $CS reconstruct "$OUT/sim/particles.star" -o "$OUT/oracle" --seed 1 --no-progress
$CS refine "$OUT/sim/particles.star" --initial "$OUT/oracle/map.mrc" -o "$OUT/local" --local --healpix-order 4 \
    --iterations 3 --initial-lowpass 15 --seed 1 --no-progress
$CS refine "$OUT/sim/particles.star" --initial "$OUT/oracle/map.mrc" -o "$OUT/global" --iterations 2 --seed 1 --no-progress
for run in local global; do
  $PY -c "import json, sys; print(sys.argv[1], round(json.load(open(sys.argv[2]))['seconds'], 1), 's')" $run "$OUT/$run/metrics.json"
done
