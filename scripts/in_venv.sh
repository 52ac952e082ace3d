#!/usr/bin/env bash
# Run a command inside the project's virtual environment, creating it on first use.
#
#   bash scripts/in_venv.sh python -m pytest -q
#
# The environment lives in .venv (override with BNN_JAX_VENV) and is built with a Python >= 3.12
# found on PATH, under pyenv, or named by BNN_JAX_PYTHON. It installs the package in editable
# mode with the extras in BNN_JAX_EXTRAS (default "dev"), at the exact versions of
# constraints.txt (the versions CI passed with); BNN_JAX_RESOLVE=newest resolves the newest
# versions setup.py allows instead. It re-installs when setup.py, constraints.txt, the extras or
# the resolve mode change. BNN_JAX_DRY_RUN=1 prints what it would do and runs nothing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${BNN_JAX_VENV:-$root/.venv}"
extras="${BNN_JAX_EXTRAS:-dev}"
resolve="${BNN_JAX_RESOLVE:-pinned}"
dry="${BNN_JAX_DRY_RUN:-0}"
constraints="$root/constraints.txt"

case "$resolve" in
  pinned)
    [ -f "$constraints" ] || { echo "error: $constraints is missing (BNN_JAX_RESOLVE=newest" \
      "installs without pins)" >&2; exit 1; }
    pins=(-c "$constraints") ;;
  newest) pins=(--upgrade --upgrade-strategy eager) ;;  # also upgrades what is installed
  *) echo "error: BNN_JAX_RESOLVE=$resolve; valid values: pinned (default), newest" >&2; exit 1 ;;
esac

is_new_enough() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }

find_python() {
  local c
  for c in "${BNN_JAX_PYTHON:-}" python3.13 python3.12 python3; do
    [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 && is_new_enough "$c" && { command -v "$c"; return; }
  done
  local pyenv_root="${PYENV_ROOT:-$(command -v pyenv >/dev/null 2>&1 && pyenv root || echo "$HOME/.pyenv")}"
  for c in "$pyenv_root"/versions/3.1[2-9]*/bin/python3 /usr/bin/python3.1[2-9] /usr/local/bin/python3.1[2-9]; do
    [ -x "$c" ] && is_new_enough "$c" && { echo "$c"; return; }
  done
  echo "error: bnn_jax needs Python >= 3.12 (jax >= 0.11, flax >= 0.12.9) and none was found;" >&2
  echo "       install one (e.g. 'pyenv install 3.12') or point BNN_JAX_PYTHON at it." >&2
  exit 1
}

# What the environment was installed from: a change to any of these re-installs.
stamp="$venv/.bnn_jax_install"
inputs="$(sha256sum "$root/setup.py" | cut -d' ' -f1)"
if [ "$resolve" = pinned ]; then inputs="$inputs $(sha256sum "$constraints" | cut -d' ' -f1)"; fi
want="$inputs $extras $resolve"
install=(-m pip install -q ${pins[@]+"${pins[@]}"} -e "$root[$extras]")
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  if [ "$dry" = 1 ]; then
    [ -x "$venv/bin/python" ] || echo "[in_venv] would create $venv with $(find_python)" >&2
    echo "[in_venv] would run: $venv/bin/python ${install[*]}" >&2
    echo "[in_venv] would then run: $*" >&2
    exit 0
  fi
  if [ ! -x "$venv/bin/python" ]; then
    py="$(find_python)"
    echo "[in_venv] creating $venv with $py ($("$py" --version 2>&1))" >&2
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip >&2
  fi
  echo "[in_venv] installing bnn_jax[$extras] (editable, $resolve versions)" >&2
  "$venv/bin/python" "${install[@]}" >&2
  echo "$want" > "$stamp"
elif [ "$dry" = 1 ]; then
  echo "[in_venv] $venv is up to date; would run: $*" >&2
  exit 0
fi
cd "$root"
export PATH="$venv/bin:$PATH"
exec "$@"
