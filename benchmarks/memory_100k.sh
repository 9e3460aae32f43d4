#!/usr/bin/env bash
# Issue 3 memory bar: 100,000 particles of 128² must reconstruct in under 4 GB of RAM.
# Simulates the stack once from the bundled structure (6.5 GB on disk, kept under benchmarks/out/mem128/sim) and reconstructs it,
# each under /usr/bin/time; the last log line is peak resident size (KB) and wall time.
# Run by hand: bash benchmarks/memory_100k.sh   (about 30 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
source .venv/bin/activate
out=benchmarks/out/mem128
mkdir -p "$out"
if [ ! -f "$out/sim/particles.star" ]; then
  /usr/bin/time -f "%M KB %e s" cryoscope simulate --pdb src/cryoscope/data/adk_open.pdb -n 100000 --box 128 \
    --voxel-size 1.5 --snr 0.1 --seed 5 --no-progress -o "$out/sim" > "$out/sim.log" 2>&1
fi
/usr/bin/time -f "%M KB %e s" cryoscope reconstruct "$out/sim/particles.star" -o "$out/rec" --seed 0 --no-progress \
  > "$out/rec.log" 2>&1
tail -n 1 "$out/sim.log" "$out/rec.log"
