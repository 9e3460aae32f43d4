#!/usr/bin/env bash
# Issue 10 acceptance (ConceptGAN), run by hand; sized for a GPU (DEVICE=cuda).
# Concepts: X = adenylate-kinase state (open 0, closed 1), Y = defocus (0.8-1.2 µm: 0, 2.5-3.5 µm: 1). Σ11 (closed at
# high defocus) is never shown to ConceptGAN.
# 1. Training data: `cryoscope simulate` of both states at each defocus (64², 1.5 Å/px, SNR 1, N particles per defocus,
#    half of each state: about 5,000 per sub-domain at N = 10,000); an independent judge set (NJ per defocus).
# 2. Judges: a state classifier and a defocus classifier trained on the judge set's real images (10 % validation;
#    on CPU, 400 steps on 2 x 2,000 images gave 97.8 % (state) and 100 % (defocus) in 30 s).
# 3. ConceptGAN full model (with the distance-3 terms: state and defocus are unequal concepts) and the ablations
#    without L_CYC4 and without L_COMM; Σ11 generated from all of Σ00 by G2∘G1 and G1∘G2 (half each); joint rate.
# 4. Augmentation: state classifiers trained on real Σ00 + Σ01 (open) vs Σ10 (closed), without and with the generated
#    Σ11 as closed; accuracy on the real held-out Σ11 (and on the judge set's real Σ01).
# Usage: benchmarks/conceptgan_acceptance.sh OUT [ITERATIONS]
# (env: DEVICE, N, NJ, BOX, VOXEL, WIDTH, DWIDTH, BATCH, JSTEPS, JWIDTH, CS=cryoscope, PYTHON=python)
# Tiny end-to-end check (CPU, minutes): N=48 NJ=48 BOX=16 VOXEL=6 WIDTH=2 DWIDTH=4 BATCH=4 JSTEPS=3 JWIDTH=4 \
#     benchmarks/conceptgan_acceptance.sh /tmp/cg_tiny 2
set -euo pipefail
OUT=${1:-benchmarks/out/acceptance_conceptgan}
ITERS=${2:-20000}
N=${N:-10000}; NJ=${NJ:-4000}; BOX=${BOX:-64}; VOXEL=${VOXEL:-1.5}
WIDTH=${WIDTH:-32}; DWIDTH=${DWIDTH:-64}; BATCH=${BATCH:-16}; JSTEPS=${JSTEPS:-1000}; JWIDTH=${JWIDTH:-16}
DEVICE=${DEVICE:-auto}; CS=${CS:-cryoscope}; PY=${PYTHON:-python}
EVAL="$PY benchmarks/conceptgan_eval.py"
mkdir -p "$OUT"
ADK="--pdb src/cryoscope/data/adk_open.pdb --pdb src/cryoscope/data/adk_closed.pdb --fractions 0.5,0.5 --box $BOX --voxel-size $VOXEL --snr 1"
LOW="--defocus-min 8000 --defocus-max 12000"
HIGH="--defocus-min 25000 --defocus-max 35000"
SIM="--device $DEVICE --no-progress"
$CS simulate $ADK $LOW -n "$N" --seed 1 $SIM -o "$OUT/sim_low"
$CS simulate $ADK $HIGH -n "$N" --seed 2 $SIM -o "$OUT/sim_high"
$CS simulate $ADK $LOW -n "$NJ" --seed 3 $SIM -o "$OUT/judge_low"
$CS simulate $ADK $HIGH -n "$NJ" --seed 4 $SIM -o "$OUT/judge_high"
$EVAL split --low "$OUT/sim_low" --high "$OUT/sim_high" -o "$OUT/split"
$EVAL split --low "$OUT/judge_low" --high "$OUT/judge_high" -o "$OUT/judge_split"
CLS="--steps $JSTEPS --width $JWIDTH --device $DEVICE"
$EVAL judges --low "$OUT/judge_low" --high "$OUT/judge_high" -o "$OUT/judges" $CLS
TRAIN="--d00 $OUT/split/d00.star --d01 $OUT/split/d01.star --d10 $OUT/split/d10.star --box $BOX --width $WIDTH
       --discriminator-width $DWIDTH --batch-size $BATCH --iterations $ITERS --distance3 --seed 1 --device $DEVICE --no-progress"
for variant in full:"" no_cyc4:"--no-cyc4" no_comm:"--no-comm"; do
  name=${variant%%:*}; flags=${variant#*:}
  $CS conceptgan train $TRAIN $flags -o "$OUT/$name"
  $CS conceptgan generate "$OUT/$name" -o "$OUT/$name/generated" --source 00 --target 11 --order both --device $DEVICE
  $EVAL joint --judges "$OUT/judges" --generated "$OUT/$name/generated/generated.star" -o "$OUT/$name/joint.json" --device $DEVICE
done
$EVAL augment --split "$OUT/split" --generated "$OUT/full/generated/generated.star" --test-open "$OUT/judge_split/d01.star" \
    -o "$OUT/augment.json" $CLS
$EVAL summary "$OUT"
