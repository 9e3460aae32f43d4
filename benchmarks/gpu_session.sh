#!/usr/bin/env bash
# One short GPU session for the learning engines (issues 6, 7, 10), as one prepared script: data, solo throughput
# of each engine at its acceptance size, then the acceptance-sized runs side by side on the one GPU, each
# stopped by --time-limit (which checkpoints and writes the outputs), then their analyses. Results (metrics, logs,
# plots) are packed into PACK/results.tar.gz, the maps into maps.tar.gz and maps_vaegan.tar.gz.
# Usage: benchmarks/gpu_session.sh OUT
# env: DEVICE (cuda), CS (python3 -m cryoscope), PY (python3), T (seconds of training per parallel run, 270),
#      DEADLINE (seconds after which the archives are made anyway and the runs left stopped, 560), PACK (their folder, OUT),
#      N_GAN (20000), N_SPECIES (30000), N_CG (10000 per defocus), NJ (4000), SOLO (1: solo timings), TINY (1: CPU check
#      of the script at toy sizes), CG (0: no ConceptGAN), PREFLIGHT (seconds for the test suite on the device
#      first, with pytest-xdist; 0: skipped)
set -u
OUT=${1:-benchmarks/out/gpu_session}
DEVICE=${DEVICE:-cuda}; PY=${PY:-python3}; CS=${CS:-"$PY -m cryoscope"}
T=${T:-270}; SOLO=${SOLO:-1}; CG=${CG:-1}; PREFLIGHT=${PREFLIGHT:-0}; DEADLINE=${DEADLINE:-560}; PACK=${PACK:-$OUT}
N_GAN=${N_GAN:-20000}; N_SPECIES=${N_SPECIES:-30000}; N_CG=${N_CG:-10000}; NJ=${NJ:-4000}; N_ADK=${N_ADK:-10000}; N_DEMO=5000
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-3}
BOX=64; GAN_STAGES=${GAN_STAGES:-16:300,32:700,64:1000000}; CRITIC=${CRITIC:-96}
RADIUS=32; CG_VOXEL=1.5; ADK2_GRID="--box 32 --voxel-size 2.0"; CG_WIDTH=32; CG_DWIDTH=64; JSTEPS=1000; SOLO_GAN=40; SOLO_VAE=100; SOLO_CG=30; MULTI_STAGES=16:500,32:1000000
if [ "${TINY:-0}" = 1 ]; then
  N_GAN=200; N_SPECIES=300; N_CG=64; NJ=64; N_ADK=100; N_DEMO=200; BOX=16; GAN_STAGES=8:2,16:1000; CRITIC=4; MULTI_STAGES=8:2,16:1000; RADIUS=6; CG_VOXEL=6
  ADK2_GRID="--box 16 --voxel-size 6"; CG_WIDTH=2; CG_DWIDTH=4; JSTEPS=3
  SOLO_GAN=2; SOLO_VAE=2; SOLO_CG=2
fi
mkdir -p "$OUT"
LOG="$OUT/session.log"
say() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }
# a command with its own log; its wall time in OUT/times.txt
t() { local name=$1; shift; local s=$(date +%s%N); "$@" >"$OUT/$name.log" 2>&1; local rc=$?
      echo "$name rc=$rc $(( ($(date +%s%N) - s) / 1000000 )) ms" | tee -a "$OUT/times.txt"; return $rc; }
# pack metrics, params, logs and plots; the maps (no particle stacks, caches or checkpoints) in two more archives
pack() {
  (cd "$OUT" && find . \( -name '*.json' -o -name '*.csv' -o -name '*.log' -o -name '*.txt' -o -name '*.png' \
     -o -name '*.html' \) -print0 | tar -czf "$PACK/results.tar.gz" --null -T -
   find . -name '*.mrc' -size -2M -not -path './sim_*' -not -path './vaegan/*' -not -path './solo_*' -not -path './cg/*' -print0 |
     tar -czf "$PACK/maps.tar.gz" --null -T -
   find . -path './vaegan/*' -name '*.mrc' -not -name '*traversal*' -print0 | tar -czf "$PACK/maps_vaegan.tar.gz" --null -T -)
  ls -la "$PACK" | tee -a "$LOG"
}

session() {
# simulations fall back to the CPU if they fail on DEVICE (data for the runs either way)
simulate() { $CS simulate "$@" --device $DEVICE || { echo "simulate failed on $DEVICE; again on the CPU"; $CS simulate "$@" --device cpu; }; }
say "start; device $DEVICE"
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())" | tee -a "$LOG"
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader 2>/dev/null | tee -a "$LOG"
MAP=tests/data/maps/ribosome70S_65.mrc
ADKP="--pdb src/cryoscope/data/adk_open.pdb --pdb src/cryoscope/data/adk_closed.pdb --fractions 0.5,0.5"

# 0. preflight: the test suite on this machine, where `--device auto` (the CLI tests' default) means the GPU: every
#    command at toy size on CUDA, beside the data generation (the runs start after both); PREFLIGHT seconds at most
if [ "$PREFLIGHT" -gt 0 ]; then
  timeout "$PREFLIGHT" $PY -m pytest -q -p no:cacheprovider -p no:warnings -n 6 -rf tests/ >"$OUT/preflight.log" 2>&1 &
fi
# 1. data (in parallel)
S="$OUT/species"
{ SNR=$($PY benchmarks/make_species.py $MAP 3.0 "$S" 28 2>>"$OUT/species.err") && echo "$SNR" >"$OUT/species_snr.txt" &&
  t sim_species simulate --map "$S/full.mrc" --map "$S/no_protuberance.mrc" --map "$S/no_small_subunit.mrc" \
    --fractions 0.3333333,0.3333333,0.3333334 -n $N_SPECIES --snr "$SNR" --mask-radius 28 --defocus-min 10000 \
    --defocus-max 50000 --max-shift 4 --box $BOX --seed 7 --no-progress -o "$OUT/sim_species"; } &
t sim_gan simulate --map $MAP --map-voxel-size 3.0 --box $BOX -n $N_GAN --snr -10 --snr-db --defocus-min 10000 \
  --defocus-max 30000 --seed 21 --no-progress -o "$OUT/sim_gan" &
CGADK="$ADKP --box $BOX --voxel-size $CG_VOXEL --snr 1 --no-progress"
LOW="--defocus-min 8000 --defocus-max 12000"; HIGH="--defocus-min 25000 --defocus-max 35000"
[ "$CG" = 1 ] && { t sim_cg_low simulate $CGADK $LOW -n $N_CG --seed 1 -o "$OUT/cg/sim_low" &&
  t sim_cg_high simulate $CGADK $HIGH -n $N_CG --seed 2 -o "$OUT/cg/sim_high" &&
  t sim_cg_jlow simulate $CGADK $LOW -n $NJ --seed 3 -o "$OUT/cg/judge_low" &&
  t sim_cg_jhigh simulate $CGADK $HIGH -n $NJ --seed 4 -o "$OUT/cg/judge_high" &&
  $PY benchmarks/conceptgan_eval.py split --low "$OUT/cg/sim_low" --high "$OUT/cg/sim_high" -o "$OUT/cg/split" &&
  $PY benchmarks/conceptgan_eval.py split --low "$OUT/cg/judge_low" --high "$OUT/cg/judge_high" -o "$OUT/cg/judge_split"
} >"$OUT/cg_data.log" 2>&1 &
t sim_adk2 simulate $ADKP $ADK2_GRID -n $N_ADK --snr -10 --snr-db --seed 24 \
  --no-progress -o "$OUT/sim_adk2" &
wait
say "data ready"
NOISE=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['noise_std'])" "$OUT/sim_species/metrics.json")
CG_TRAIN="--d00 $OUT/cg/split/d00.star --d01 $OUT/cg/split/d01.star --d10 $OUT/cg/split/d10.star --box $BOX
  --width $CG_WIDTH --discriminator-width $CG_DWIDTH --batch-size 16 --iterations 20000 --distance3 --seed 1 --device $DEVICE --no-progress"
GAN="$OUT/sim_gan/particles.star --no-positivity --particle-radius $RADIUS --critic-base $CRITIC --critic-lr 1e-3
  --device $DEVICE --seed 1 --no-progress --checkpoint-every 500"

# 2. solo throughput at the acceptance sizes (per-step seconds in each log.csv)
if [ "$SOLO" = 1 ]; then
  t solo_cryogan $CS cryogan $GAN --stages $BOX:$SOLO_GAN --no-halves -o "$OUT/solo_cryogan"
  t solo_vaegan $CS vaegan train "$OUT/sim_species/particles.star" -o "$OUT/solo_vaegan" --box $BOX --steps $SOLO_VAE \
    --device $DEVICE --seed 1 --no-progress
  [ "$CG" = 1 ] && t solo_conceptgan $CS conceptgan train $CG_TRAIN --iterations $SOLO_CG -o "$OUT/solo_conceptgan"
  say "solo timings done"
fi

# 3. the acceptance-sized runs side by side, each stopped by --time-limit, then analysed
t cryogan $CS cryogan $GAN --stages $GAN_STAGES --reference "$OUT/sim_gan/truth_1.mrc" --time-limit $T -o "$OUT/cryogan" &
{ t vaegan $CS vaegan train "$OUT/sim_species/particles.star" -o "$OUT/vaegan" --box $BOX --steps 250000 \
    --device $DEVICE --seed 1 --no-progress --checkpoint-every 2000 --time-limit $T &&
  t vaegan_analyze $CS vaegan analyze "$OUT/vaegan" -o "$OUT/vaegan/analysis" --truth-star "$OUT/sim_species/ground_truth.star" \
    --reference "$S/full.mrc,$S/no_protuberance.mrc,$S/no_small_subunit.mrc" --noise-sigma-truth $NOISE \
    --device $DEVICE --no-progress; } &
[ "$CG" = 1 ] && { t judges $PY benchmarks/conceptgan_eval.py judges --low "$OUT/cg/judge_low" --high "$OUT/cg/judge_high" \
    -o "$OUT/cg/judges" --steps $JSTEPS --width 16 --device $DEVICE &
  t conceptgan $CS conceptgan train $CG_TRAIN --checkpoint-every 2000 --time-limit $T -o "$OUT/cg/full" &&
  t conceptgan_generate $CS conceptgan generate "$OUT/cg/full" -o "$OUT/cg/full/generated" --source 00 --target 11 \
    --order both --device $DEVICE && wait &&
  t conceptgan_joint $PY benchmarks/conceptgan_eval.py joint --judges "$OUT/cg/judges" \
    --generated "$OUT/cg/full/generated/generated.star" -o "$OUT/cg/full/joint.json" --device $DEVICE &&
  t conceptgan_augment $PY benchmarks/conceptgan_eval.py augment --split "$OUT/cg/split" \
    --generated "$OUT/cg/full/generated/generated.star" --test-open "$OUT/cg/judge_split/d01.star" \
    -o "$OUT/cg/augment.json" --steps $JSTEPS --width 16 --device $DEVICE; } &
t demo timeout 300 $CS demo -o "$OUT/demo" -n $N_DEMO --device $DEVICE --seed 1 &  # the likelihood engine on DEVICE
M="$OUT/sim_adk2"
t multicryogan $CS multicryogan "$M/particles.star" -o "$OUT/multi_discrete" --stages $MULTI_STAGES --no-halves \
  --latent categorical:2 --reference "$M/truth_1.mrc,$M/truth_2.mrc" --truth-star "$M/ground_truth.star" \
  --device $DEVICE --seed 1 --no-progress --checkpoint-every 500 --time-limit $T &
wait
say "runs done"
}

# 4. run, and pack at the end or at DEADLINE seconds, whichever comes first
session &
pid=$!
while kill -0 $pid 2>/dev/null && [ $SECONDS -lt "$DEADLINE" ]; do sleep 2; done
kill -0 $pid 2>/dev/null && say "deadline: packing while runs are still going"
pack
say "end"
