#!/usr/bin/env bash
# Create the peer venv (.peers/, git-ignored) with cryoDRGN and ASPIRE, from nothing.
# Usage: bash benchmarks/setup_peers.sh   (PY=python3.11 PEERS=/path/to/venv to override)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-python3}"
PEERS="${PEERS:-$ROOT/.peers}"
"$PY" -m venv "$PEERS"
"$PEERS/bin/python" -m pip install -q --upgrade pip
"$PEERS/bin/python" -m pip install -q -r "$ROOT/benchmarks/peers_requirements.txt"
"$PEERS/bin/python" -c "import cryodrgn, aspire, torch; print('cryodrgn', cryodrgn.__version__, '| aspire', aspire.__version__, '| torch', torch.__version__)"
