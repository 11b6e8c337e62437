#!/usr/bin/env bash
# setup-python.sh - create the Python environment bqrt's BQSKit support uses: .venv in the repo
# with bqskit==1.2.1 and pytest from PyPI, and bqrt's bqrt_resources module. Idempotent: a
# complete .venv is left alone (but for that module, copied again).
#
#   bash launch/setup-python.sh            # then build with PYO3_PYTHON=$PWD/.venv/bin/python
#
# Needs a Python 3.9..3.12 with the venv module and a shared libpython (the runtime embeds it).
# On Debian 12 without one, it installs python3-venv, python3-dev and libpython3.11-dev with
# apt-get (as root or through sudo). PYTHON=/path/to/python3 picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
BQSKIT_VERSION=1.2.1
venv=$PWD/.venv

say() { echo "setup-python: $*"; }
die() { echo "setup-python: $*" >&2; exit 1; }

# bqrt_resources (resource requirements for BQSKit passes, falling back to BQSKit's own
# submit and map) goes into the environment's site-packages, kept up to date with the repo.
install_helper() {
  local site
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  cp python/bqrt_resources.py "$site/bqrt_resources.py"
}

# A complete environment: nothing to do but the helper.
if [ -x "$venv/bin/python" ] &&
  "$venv/bin/python" -c "import bqskit, pytest, dill, sys; assert bqskit.__version__ == '$BQSKIT_VERSION', bqskit.__version__" 2>/dev/null; then
  install_helper
  say "$venv has bqskit $BQSKIT_VERSION, pytest and bqrt_resources"
  exit 0
fi

apt_install() {
  local sudo=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "missing $*; install them with apt-get as root"
    sudo=(sudo)
  fi
  say "installing $* with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq >/dev/null
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Whether $1 is a usable interpreter: version 3.9..3.12, venv module, shared libpython.
usable() {
  "$1" - <<'EOF' 2>/dev/null
import sys, sysconfig, os, venv, ensurepip
assert (3, 9) <= sys.version_info[:2] <= (3, 12)
assert sysconfig.get_config_var("Py_ENABLE_SHARED")
lib = os.path.join(sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY"))
assert os.path.exists(lib), lib
EOF
}

py=${PYTHON:-}
if [ -z "$py" ]; then
  for c in python3 python3.11 /usr/bin/python3; do
    if command -v "$c" >/dev/null && usable "$(command -v "$c")"; then
      py=$(command -v "$c")
      break
    fi
  done
fi
if [ -z "$py" ]; then
  if [ -f /etc/debian_version ]; then
    apt_install python3 python3-venv python3-dev libpython3-dev
    usable /usr/bin/python3 || die "/usr/bin/python3 still lacks venv or a shared libpython after apt-get"
    py=/usr/bin/python3
  else
    die "no Python 3.9..3.12 with the venv module and a shared libpython found; install one (e.g. python3-venv and libpython3-dev) or set PYTHON=/path/to/python3"
  fi
fi
usable "$py" || die "$py is not usable: it needs Python 3.9..3.12, the venv module and a shared libpython (build it with --enable-shared, or install libpython3-dev)"

if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv with $py ($("$py" --version 2>&1))"
  "$py" -m venv "$venv" || die "'$py -m venv' failed; install python3-venv"
fi
say "installing bqskit==$BQSKIT_VERSION and pytest into $venv (a few minutes the first time)"
log=$(mktemp /tmp/bqrt-setup-python.XXXXXX.log)
if ! "$venv/bin/python" -m pip install --disable-pip-version-check -q "bqskit==$BQSKIT_VERSION" pytest >"$log" 2>&1; then
  tail -30 "$log" >&2
  die "pip install failed (log: $log)"
fi
rm -f "$log"
install_helper
"$venv/bin/python" -c "import bqskit; print('setup-python: bqskit', bqskit.__version__, 'ready in $venv')"
