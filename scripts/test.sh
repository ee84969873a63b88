#!/usr/bin/env bash
# Set up if needed (scripts/setup.sh) and run the test suite. Extra arguments go to pytest
# (e.g. -m "not slow" for the quick loop). CI runs this script (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
python -m pytest -q "$@"
