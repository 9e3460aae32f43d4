#!/usr/bin/env bash
# Soft-mode studies of Rangan et al. on the bundled 70S ribosome map (65^3, 5 Å/px) with 1024 synthetic images,
# and the stiffness R(s) along the adenylate-kinase open -> closed morph. Run by hand (CPU: ~2 h on 2 cores):
#   bash benchmarks/softmodes_studies.sh [TWO_PI_K] [N_IMAGES]      -> benchmarks/out/softmodes/*, summary.md
# Environment: OUT (folder), ITERS (Lanczos iterations, 120), MODES (7), MAPS (1). The converged 2πK = 16 study:
#   OUT=benchmarks/out/softmodes16 ITERS=400 MODES=3 MAPS=0 bash benchmarks/softmodes_studies.sh 16
set -euo pipefail
cd "$(dirname "$0")/.."
K=${1:-32}
J=${2:-1024}
OUT=${OUT:-benchmarks/out/softmodes}
MAP=tests/data/maps/ribosome70S_65.mrc
CLI=.venv/bin/cryoscope
mkdir -p "$OUT"
run() {  # name, extra args...
  local name=$1; shift
  [ -f "$OUT/$name/metrics.json" ] && return 0
  "$CLI" softmodes "$MAP" -o "$OUT/$name" --pixel-size 5 --n-images "$J" --two-pi-k "$K" --max-iter "${ITERS:-120}" \
    --n-modes "${MODES:-7}" --maps-for "${MAPS:-1}" --seed 0 --no-progress "$@" > "$OUT/$name.log" 2>&1
}
# viewing-angle distributions (noiseless templates; σ̂² from SNR 0.1 of the uniform set, fixed for all)
run view_uniform --simulate uniform --snr 0.1
T=$(.venv/bin/python -c "import json;print(json.load(open('$OUT/view_uniform/metrics.json'))['temperature'])")
for spec in polar:0.5 equator:0.5 polar:0.35 equator:0.35 cap:30 band:15 band:0.5; do
  run "view_${spec/:/_}" --simulate "$spec" --temperature "$T"
done
# empirical viewing directions: a real cryoSPARC refinement (2019 particles), if the shared data are at hand
CS=${EMPIRICAL_CS:-../shared/data/metadata/cryosparc_P12_J24_001_particles.cs}
[ -f "$CS" ] && run view_empirical --simulate "star:$CS" --temperature "$T"
# defocus (uniform views, CTF on, the same σ̂² for all three)
for df in 9500:10500 16500:17500 22500:23500; do
  run "defocus_${df/:/_}" --simulate uniform --defocus "$df" --temperature "$T"
done
# stiffness along the adenylate-kinase morph (11 frames, 32 px, 2 Å/px)
if [ ! -f "$OUT/adk_path/metrics.json" ]; then
  "$CLI" simulate --trajectory src/cryoscope/data/adk_open.pdb --trajectory src/cryoscope/data/adk_closed.pdb --n-frames 11 \
    --box 32 --voxel-size 2 --n-particles 8 -o "$OUT/adk_frames" --seed 0 > "$OUT/adk_frames.log" 2>&1
  "$CLI" softmodes-path "$OUT"/adk_frames/truth_first.mrc "$OUT"/adk_frames/truth_frame00?.mrc "$OUT"/adk_frames/truth_last.mrc \
    -o "$OUT/adk_path" --n-images "$J" --two-pi-k "$K" --no-progress > "$OUT/adk_path.log" 2>&1
fi
.venv/bin/python benchmarks/softmodes_summary.py "$OUT" > "$OUT/summary.md"
cat "$OUT/summary.md"
