#!/usr/bin/env bash
# The lower bound of every pin, tested once (outside CI): a fresh venv with each dependency of
# pyproject.toml (runtime and dev) at the lowest version its range allows, then `make test-fast` in it.
#
#   bash scripts/lowest_versions.sh [VENV]          # default VENV: /tmp/vae_dynamics-lowest
#   LOWEST_TORCH=2.13.0 bash scripts/lowest_versions.sh   # keep another torch (e.g. where only the
#                                                          # CPU wheel of the lock is at hand)
#
# Unbounded dev tools (pandas-stubs, types-*) take their newest release. It prints the versions it
# installed (VENV/lowest.txt) and ends with make test-fast's exit status.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-/tmp/vae_dynamics-lowest}
python=${PYTHON:-python3}

constraints=$(mktemp)
"$python" - "$constraints" <<'EOF'
import re, sys, tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
lowest = []
for spec in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
    spec = spec.split(";")[0].split("#")[0].strip()
    name = re.match(r"[A-Za-z0-9_.\-]+", spec).group(0)
    low = re.search(r">=\s*([^,\s]+)", spec)
    if low:
        lowest.append(f"{name}=={low.group(1)}")
open(sys.argv[1], "w").write("\n".join(lowest) + "\n")
print("lowest allowed versions:", " ".join(lowest))
EOF
torch_low=$(sed -n 's/^torch==//p' "$constraints")
torch=${LOWEST_TORCH:-$torch_low}
sed -i "s/^torch==.*/torch==$torch/" "$constraints"

rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# The lowest versions of the direct dependencies; pip resolves the rest inside them.
"$venv/bin/python" -m pip install --quiet -c "$constraints" -e ".[dev]"
"$venv/bin/python" -m pip freeze --exclude-editable > "$venv/lowest.txt"
echo "installed (the pins of $constraints held):"
grep -iE "^($(sed 's/==.*//' "$constraints" | paste -sd'|'))==" "$venv/lowest.txt" || true
rm -f "$constraints"

# make test-fast with this venv's tools (the Makefile's BIN); the install step is skipped (touch).
touch "$venv/bin/vae-dynamics"
make test-fast VENV="$venv" BIN="$venv/bin"
