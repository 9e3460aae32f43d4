#!/usr/bin/env bash
# Issue 6 acceptance (CryoGAN / Multi-CryoGAN), run by hand; sized for a GPU (DEVICE=cuda), hours on 2 CPU cores.
# 1. 70S ribosome at 64² (3 Å/px), uniform poses, CTF (defocus 1-3 µm), 20,000 particles at SNR -10 dB and -20 dB:
#    gold-standard half-maps, FSC against truth. The test map has negative regions (they sum to 89 % of its positive
#    density), so positivity is off. 2. Pose-distribution mismatch at -10 dB: data concentrated around the 6 axis views
#    (views:20) reconstructed assuming uniform and the true views:20. 3. Multi-CryoGAN on the adenylate-kinase
#    open<->closed trajectory at 32² (2 Å/px, latent uniform on [0, 1]) and on two discrete states (50/50), SNR -10 dB.
# Usage: benchmarks/acceptance_gan.sh OUT [N]   (env: DEVICE, CS=cryoscope, STAGES, ITER_SCALE)
set -euo pipefail
OUT=${1:-benchmarks/out/acceptance_gan}
N=${2:-20000}
CS=${CS:-cryoscope}
DEVICE=${DEVICE:-auto}
STAGES=${STAGES:-16:2000,32:4000,64:8000}
mkdir -p "$OUT"
t() { local s=$(date +%s); "$@"; echo "$*: $(( $(date +%s) - s )) s" >> "$OUT/times.txt"; }
MAP=tests/data/maps/ribosome70S_65.mrc
SIM="--map $MAP --map-voxel-size 3.0 --box 64 -n $N --snr-db --defocus-min 10000 --defocus-max 30000"
GAN="--stages $STAGES --no-positivity --particle-radius 32 --device $DEVICE --seed 1 --no-progress"
for snr in -10 -20; do
  $CS simulate $SIM --snr $snr --seed 21 -o "$OUT/sim$snr"
  t $CS cryogan "$OUT/sim$snr/particles.star" -o "$OUT/cryogan$snr" $GAN --reference "$OUT/sim$snr/truth_1.mrc"
done
$CS simulate $SIM --snr -10 --poses views:20 --seed 22 -o "$OUT/sim_views"
for assumed in uniform views:20; do
  t $CS cryogan "$OUT/sim_views/particles.star" -o "$OUT/mismatch_${assumed%%:*}" $GAN --poses "$assumed" \
      --reference "$OUT/sim_views/truth_1.mrc"
done
ADK="--trajectory src/cryoscope/data/adk_open.pdb --trajectory src/cryoscope/data/adk_closed.pdb --box 32 --voxel-size 2.0"
$CS simulate $ADK --n-frames 11 -n $N --snr -10 --snr-db --seed 23 -o "$OUT/sim_adk"
FRAMES=$(ls "$OUT"/sim_adk/truth_first.mrc "$OUT"/sim_adk/truth_frame*.mrc "$OUT"/sim_adk/truth_last.mrc | paste -sd,)
t $CS multicryogan "$OUT/sim_adk/particles.star" -o "$OUT/multi_continuous" --stages 16:2000,32:6000 --no-halves \
    --latent uniform --reference "$FRAMES" --truth-star "$OUT/sim_adk/ground_truth.star" --device $DEVICE --seed 1 --no-progress
$CS simulate --map "$OUT/sim_adk/truth_first.mrc" --map "$OUT/sim_adk/truth_last.mrc" --fractions 0.5,0.5 -n $N \
    --snr -10 --snr-db --seed 24 -o "$OUT/sim_adk2"
t $CS multicryogan "$OUT/sim_adk2/particles.star" -o "$OUT/multi_discrete" --stages 16:2000,32:6000 --no-halves \
    --latent categorical:2 --reference "$OUT/sim_adk2/truth_1.mrc,$OUT/sim_adk2/truth_2.mrc" \
    --truth-star "$OUT/sim_adk2/ground_truth.star" --device $DEVICE --seed 1 --no-progress
