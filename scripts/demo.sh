#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job on the shipped demo: export, compile for this CPU
# with ONNX Runtime, profile, select by measured latency, report (out/demo/report/report.html) and
# bundle (out/demo/bundle/cpu/, run its app.py). Extra arguments go to esta-export.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
exec esta-export examples/demo/digits-esta.safetensors --target cpu --out "${ESTA_DEMO_OUT:-out/demo}" \
    --val-data examples/demo/digits-val.npz "$@"
