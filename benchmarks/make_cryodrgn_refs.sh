#!/usr/bin/env bash
# Regenerate tests/data/cryodrgn/ reference maps with cryoDRGN's own `backproject_voxel`.
# Usage: bash benchmarks/make_cryodrgn_refs.sh [SRC_DIR]
#   SRC_DIR holds hand.mrcs, hand_rot.pkl, toy_projections.mrcs, toy_rot_trans.pkl
#   (default: tests/data/cryodrgn, the committed copies). Needs the peer venv (benchmarks/setup_peers.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PEERS="${PEERS:-$ROOT/.peers}"
SRC="${1:-$ROOT/tests/data/cryodrgn}"
DST="$ROOT/tests/data/cryodrgn"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
BP=("$PEERS/bin/cryodrgn" backproject_voxel --uninvert-data)

# (a) hand: rotations only (cryoDRGN's PoseTracker accepts a bare (N, 3, 3) pickle; no shifts applied).
"${BP[@]}" "$SRC/hand.mrcs" --poses "$SRC/hand_rot.pkl" -o "$WORK/hand" > "$WORK/hand.log" 2>&1
# (b) toy: (rotations, translations) tuple as given.
"${BP[@]}" "$SRC/toy_projections.mrcs" --poses "$SRC/toy_rot_trans.pkl" -o "$WORK/toy" > "$WORK/toy.log" 2>&1
# (c) toy, rotations only (the toy images carry no shifts; see README.md).
"$PEERS/bin/python" -c "import pickle,sys; r,_=pickle.load(open(sys.argv[1],'rb')); pickle.dump(r,open(sys.argv[2],'wb'))" \
  "$SRC/toy_rot_trans.pkl" "$WORK/toy_rot.pkl"
"${BP[@]}" "$SRC/toy_projections.mrcs" --poses "$WORK/toy_rot.pkl" -o "$WORK/toy_rotonly" > "$WORK/toy_rotonly.log" 2>&1

for name in hand toy toy_rotonly; do
  cp "$WORK/$name/backproject.mrc" "$DST/${name}_full.mrc"
  cp "$WORK/$name/half_map_a.mrc" "$DST/${name}_half1.mrc"
  cp "$WORK/$name/half_map_b.mrc" "$DST/${name}_half2.mrc"
  cp "$WORK/$name/fsc-vals.txt" "$DST/${name}_fsc.txt"
  grep -h "res @ FSC" "$WORK/$name.log" | sed "s/^.*res @/$name: res @/"
done
"$PEERS/bin/python" -c "import cryodrgn; print('cryodrgn', cryodrgn.__version__)"
