#!/usr/bin/env bash
# Issue 6, pose-distribution mismatch at CPU size (about 9 min per run on 2 cores): the 70S ribosome at 32²
# (6.09 Å/px, the 65-voxel 3 Å map Fourier-cropped), 5,000 particles at SNR -10 dB, CTF (defocus 1-3 µm), poses
# concentrated around the 6 axis views (views:20). CryoGAN is run assuming the true distribution (views:20), a wider
# one (views:40) and uniform poses; each map is scored by FSC against the truth after alignment (metrics.json).
# The GPU-sized version (64², 20,000 particles) is part of acceptance_gan.sh.
# Usage: benchmarks/gan_mismatch_cpu.sh OUT [SEEDS]   (SEEDS: space-separated CryoGAN seeds, default "1")
set -euo pipefail
OUT=${1:-benchmarks/out/gan_mismatch}
SEEDS=${2:-1}
CS=${CS:-cryoscope}
mkdir -p "$OUT"
t() { local s=$(date +%s); "$@"; echo "$*: $(( $(date +%s) - s )) s" >> "$OUT/times.txt"; }
$CS simulate --map tests/data/maps/ribosome70S_65.mrc --map-voxel-size 3.0 --box 32 --voxel-size 6.09375 -n 5000 \
    --snr -10 --snr-db --defocus-min 10000 --defocus-max 30000 --poses views:20 --seed 22 -o "$OUT/sim" --no-progress
GAN="--stages 16:300,32:500 --critic-base 32 --critic-lr 1e-3 --no-positivity --particle-radius 16 --no-halves --no-progress"
for seed in $SEEDS; do
  for assumed in views:20 views:40 uniform; do
    t $CS cryogan "$OUT/sim/particles.star" -o "$OUT/gan_${assumed/:/}_s$seed" $GAN --seed "$seed" --poses "$assumed" \
        --reference "$OUT/sim/truth_1.mrc"
  done
done
python - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
for p in sorted(Path(sys.argv[1]).glob("gan_*/metrics.json")):
    m = json.loads(p.read_text())
    print(f"{p.parent.name}: FSC 0.5 {m['truth_fsc_0.5_cycles_per_pixel']:.3f}, FSC 0.143 {m['truth_fsc_0.143_cycles_per_pixel']:.3f} "
          f"cycles/px, cc {m['truth_cc']:.3f}, {m['seconds']:.0f} s")
EOF
