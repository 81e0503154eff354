#!/usr/bin/env bash
# Regenerate the lock files: resolve pyproject.toml's ranges afresh in a new venv per stack and freeze what pip chose.
#   constraints.txt           the default stack (transformers 5): .[dev], and the ray extra on top of it
#   constraints-optimum.txt   the Optimum stack (transformers 4.57, which optimum-onnx 0.1.0 needs): .[dev,optimum]
# Run it to move to newer releases on purpose, then run .ci/run before committing the new files.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

lock() {  # lock EXTRAS FILE [REQUIREMENT...]: the requirements narrow pyproject's ranges to what we test
  local extras=$1 file=$2 venv="$tmp/${2%.txt}"
  local readme_extras=${extras%,ray}  # README installs without ray; its pins are in the file for `pip install -e ".[ray]"`
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch==2.13.0
  "$venv/bin/pip" install -q -e ".[$extras]" "${@:3}"
  "$venv/bin/pip" check
  {
    echo "# The versions hfcompress is tested with: pip freeze of a fresh venv (scripts/lock_constraints.sh). Install with"
    echo "#   pip install torch==2.13.0 && pip install -e \".[$readme_extras]\" -c $file"
    echo "# so that users get what CI tested and pip never back-tracks."
    # torch's local version (+cpu) would not match a CUDA build: pin the release only
    "$venv/bin/pip" freeze --exclude-editable | sed -E 's/^torch==([0-9.]+)\+.*/torch==\1/'
  } > "$file"
  echo "$file: $(grep -c '==' "$file") pins;" $(grep -E '^(transformers|huggingface_hub)==' "$file")
}

# transformers 5 ships a minor release every few weeks: move to the next one on purpose, here, after testing it
lock dev,ray constraints.txt "transformers~=5.23.0"
lock dev,optimum constraints-optimum.txt
