#!/usr/bin/env bash
# Speed of `cryoscope softmodes` (uniform views, 1024 noiseless images of the 70S map, 5 Å/px): Hessian-vector
# products per second and the time to the 7 softest modes at 2πK = 32 and 48 (Lanczos until all 7 converge). Run by hand on an idle machine:
#   bash benchmarks/softmodes_speed.sh [DEVICE] [DTYPE]   -> benchmarks/out/softmodes_speed/*/metrics.json
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=${1:-cpu}
DT=${2:-float32}
OUT=benchmarks/out/softmodes_speed
mkdir -p "$OUT"
for K in 32 48; do
  .venv/bin/cryoscope softmodes tests/data/maps/ribosome70S_65.mrc -o "$OUT/k${K}_${DEV}_${DT}" --pixel-size 5 --simulate uniform \
    --n-images 1024 --two-pi-k "$K" --max-iter 1500 --n-modes 7 --maps-for 1 --device "$DEV" --dtype "$DT" --no-progress \
    > "$OUT/k${K}_${DEV}_${DT}.log" 2>&1
  .venv/bin/python - "$OUT/k${K}_${DEV}_${DT}/metrics.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
res = [r["residual"] / r["eigenvalue"] for r in m["modes"]]
print(f"2πK={m['two_pi_k']:g} P={m['n_parameters']} J={m['n_images']} {m['device']} {m['dtype']}: {m['hvp_per_second']:.3g} HVP/s, "
      f"{m['lanczos_iterations']} Lanczos iterations in {m['seconds_to_modes']:.0f} s (converged {m['converged']}), "
      f"7 softest {['%.4g' % e for e in m['eigenvalues']]}, relative residuals {['%.1e' % r for r in res]}, total {m['seconds']:.0f} s")
PY
done
