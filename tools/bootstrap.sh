#!/usr/bin/env bash
# Install what the project needs on a Debian 12 machine: apt packages (strongSwan peer, iproute2,
# ping, node), the Python package with its test extra (pip), and the npm packages (the wasm
# MicroPython). Idempotent: skips work whose inputs have not changed. `--force` redoes all.
set -euo pipefail
cd "$(dirname "$0")/.."
force=0; [ "${1:-}" = "--force" ] && force=1

APT_PKGS="strongswan-charon strongswan-swanctl libstrongswan-standard-plugins libstrongswan-extra-plugins
libcharon-extra-plugins iproute2 iputils-ping"
command -v node >/dev/null 2>&1 || APT_PKGS="$APT_PKGS nodejs"
command -v npm >/dev/null 2>&1 || APT_PKGS="$APT_PKGS npm"
missing=""
for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then echo "bootstrap: need root to apt-get install:$missing" >&2; exit 1; fi
    echo "bootstrap: apt-get install$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $APT_PKGS >/dev/null
fi

PY="${PYTHON:-python3}"
mkdir -p .cache
stamp=.cache/bootstrap.stamp
want=$(cat pyproject.toml tools/micropython/package.json tools/micropython/package-lock.json 2>/dev/null \
       | sha256sum | cut -c1-16)
if [ $force = 1 ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] \
        || ! "$PY" -c "import host, firmware, invoke, serial, cryptography, hypothesis, scapy, vici" 2>/dev/null; then
    echo "bootstrap: pip install -e .[test]"
    "$PY" -m pip install -q -e '.[test]'
    if [ -f tools/micropython/package-lock.json ]; then
        echo "bootstrap: npm ci --prefix tools/micropython"
        npm ci --prefix tools/micropython --no-audit --no-fund --loglevel=error
    fi
    echo "$want" > "$stamp"
fi
