#!/usr/bin/env bash
# Move the pins deliberately: build a throw-away environment from the NEWEST releases that
# pyproject.toml allows, run the test suite in it, and only when it passes rewrite constraints.txt
# with exactly what was installed. Review the diff of constraints.txt and commit it with the run's
# result. CI (.ci/run -> scripts/test.sh) always installs from constraints.txt.
#
#   scripts/lock.sh [--no-test] [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
run_tests=1
if [ "${1:-}" = --no-test ]; then run_tests=0; shift; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export ESTA_VENV="$work/venv" ESTA_CONSTRAINTS=""
. scripts/setup.sh
echo "lock: newest releases installed in $ESTA_VENV"
if [ "$run_tests" = 1 ]; then
  python -m pytest -q "$@" || { echo "lock: tests fail on the newest releases; constraints.txt left as it was" >&2; exit 1; }
fi
{
  echo "# Pinned versions that CI installs (scripts/setup.sh: pip install -c constraints.txt)."
  echo "# Written by scripts/lock.sh on $(date -u +%Y-%m-%d) with $(python --version) on $(uname -m):"
  echo "# the newest releases pyproject.toml allowed, after the test suite passed with them."
  echo "# The pins apply to the Python that made them and newer; older Pythons resolve within pyproject's ranges."
  pyv=$(python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  python -m pip freeze --exclude-editable --all | grep -v -E '^(pip|setuptools|wheel)==' | sed -E 's/\+[A-Za-z0-9.]+$//' \
    | sort -f | while read -r line; do
        case "$line" in
          torch==*) echo "$line" ;;
          *) echo "$line ; python_version >= \"$pyv\"" ;;
        esac
      done
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "lock: constraints.txt rewritten ($(grep -vc '^#' constraints.txt) pins); review and commit it"
