#!/usr/bin/env bash
# Issue 7 acceptance (VAE-GAN clustering), run by hand; sized for a GPU (DEVICE=cuda): the thesis trains 250,000 steps.
# 1. Three species (70S, without a large-subunit protuberance, without the small subunit; benchmarks/make_species.py)
#    at 64² (3 Å/px), 10,000 particles each, CTF with defocus 1-5 µm, shifts ±4 px, white noise of σ = 1 in units of the
#    mean CTF-free particle contrast (make_species.py prints that SNR). Full model, and the ablations without invariance
#    and without the noise generator; NMI/ARI, cluster maps' FSC, noise σ.
# 2. cryoDRGN (peer venv, benchmarks/setup_peers.sh) with the true poses, k-means (k = 3) on its latents: NMI.
# 3. Adenylate-kinase open<->closed trajectory (11 frames): one cluster, traversal maps matched to frames.
# Usage: benchmarks/acceptance_vaegan.sh OUT [STEPS]   (env: DEVICE, CS=cryoscope, PEERS=.peers)
set -euo pipefail
OUT=${1:-benchmarks/out/acceptance_vaegan}
STEPS=${2:-250000}
CS=${CS:-cryoscope}
PY=${PYTHON:-python}
PEERS=${PEERS:-.peers}
DEVICE=${DEVICE:-auto}
mkdir -p "$OUT"
SNR=$($PY benchmarks/make_species.py tests/data/maps/ribosome70S_65.mrc 3.0 "$OUT/species" 28)
echo "SNR of sigma = 1: $SNR" | tee "$OUT/snr.txt"
S="$OUT/species"
$CS simulate --map "$S/full.mrc" --map "$S/no_protuberance.mrc" --map "$S/no_small_subunit.mrc" \
    --fractions 0.3333333,0.3333333,0.3333334 -n 30000 --snr "$SNR" --mask-radius 28 --defocus-min 10000 \
    --defocus-max 50000 --max-shift 4 --seed 7 --no-progress -o "$OUT/sim"
NOISE=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['noise_std'])" "$OUT/sim/metrics.json")
REFS="$S/full.mrc,$S/no_protuberance.mrc,$S/no_small_subunit.mrc"
TRAIN="--box 64 --steps $STEPS --device $DEVICE --seed 1 --no-progress"
ANALYZE="--truth-star $OUT/sim/ground_truth.star --reference $REFS --noise-sigma-truth $NOISE --device $DEVICE --no-progress"
for variant in full:"" no_invariance:"--no-invariant" no_noise:"--noise none"; do
  name=${variant%%:*}; flags=${variant#*:}
  $CS vaegan train "$OUT/sim/particles.star" -o "$OUT/$name" $TRAIN $flags
  $CS vaegan analyze "$OUT/$name" -o "$OUT/$name/analysis" $ANALYZE
done
# cryoDRGN with the true poses, then k-means (k = 3) on its latents
$CS convert "$OUT/sim/particles.star" "$OUT/drgn/poses.pkl" --ctf-out "$OUT/drgn/ctf.pkl"
"$PEERS/bin/cryodrgn" train_vae "$OUT/sim/particles.mrcs" --poses "$OUT/drgn/poses.pkl" --ctf "$OUT/drgn/ctf.pkl" \
    --zdim 8 -n 25 --uninvert-data --seed 1 -o "$OUT/drgn/vae"
$PY benchmarks/cryodrgn_kmeans_nmi.py "$OUT/drgn/vae" "$OUT/sim/ground_truth.star" 3
# continuous motion
ADK="--trajectory src/cryoscope/data/adk_open.pdb --trajectory src/cryoscope/data/adk_closed.pdb --box 64 --voxel-size 1.0"
$CS simulate $ADK --n-frames 11 -n 30000 --snr 0.1 --defocus-min 10000 --defocus-max 50000 --max-shift 4 --seed 8 \
    --no-progress -o "$OUT/sim_adk"
FRAMES=$(ls "$OUT"/sim_adk/truth_first.mrc "$OUT"/sim_adk/truth_frame*.mrc "$OUT"/sim_adk/truth_last.mrc | paste -sd,)
$CS vaegan train "$OUT/sim_adk/particles.star" -o "$OUT/adk" $TRAIN
$CS vaegan analyze "$OUT/adk" -o "$OUT/adk/analysis" --reference "$FRAMES" --device $DEVICE --no-progress
