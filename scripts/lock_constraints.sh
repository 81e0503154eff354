#!/usr/bin/env bash
# Regenerate constraints.txt: resolve pyproject.toml's ranges afresh in a new venv and freeze what pip chose.
# Run it to move to newer releases on purpose, then run .ci/run before committing the new file.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(mktemp -d)/venv"
trap 'rm -rf "$(dirname "$venv")"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install -q torch==2.13.0
"$venv/bin/pip" install -q -e ".[dev]"
{
  echo "# The versions hfcompress is tested with: pip freeze of a fresh venv (scripts/lock_constraints.sh). Install with"
  echo "#   pip install torch==2.13.0 && pip install -e \".[dev]\" -c constraints.txt"
  echo "# so that users get what CI tested and pip never back-tracks."
  # torch's local version (+cpu) would not match a CUDA build: pin the release only
  "$venv/bin/pip" freeze --exclude-editable | sed -E 's/^torch==([0-9.]+)\+.*/torch==\1/'
} > constraints.txt
echo "constraints.txt: $(grep -c '==' constraints.txt) pins"
