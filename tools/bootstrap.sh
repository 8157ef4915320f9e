#!/usr/bin/env bash
# Install what the project needs on Debian 12 or 13: apt packages (Python's venv, and its headers
# with gcc for the one C extension, PyPI cobs; the strongSwan peer, iproute2, ping, iperf3,
# nftables and conntrack for the NAT-T tests' router, keepalived for the HA test bed, node), a
# project virtual environment in .venv built from Debian's own python3 (PEP 668 forbids pip in the system Python; Debian's
# python3-cryptography and python3-invoke are too old), the package with its test extra in that
# venv, and the npm packages (the wasm MicroPython). Idempotent: skips work whose inputs have not
# changed. `--force` redoes all.
#
# PYTHON=/path/to/python3 picks another interpreter (>= 3.11) for the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
force=0; [ "${1:-}" = "--force" ] && force=1

APT_PKGS="python3 python3-venv python3-dev gcc strongswan-charon strongswan-swanctl libstrongswan-standard-plugins
libstrongswan-extra-plugins libcharon-extra-plugins iproute2 iputils-ping iperf3 nftables conntrack keepalived"
command -v node >/dev/null 2>&1 || APT_PKGS="$APT_PKGS nodejs"
command -v npm >/dev/null 2>&1 || APT_PKGS="$APT_PKGS npm"
missing=""
for p in $APT_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then echo "bootstrap: need root to apt-get install:$missing" >&2; exit 1; fi
    echo "bootstrap: apt-get install$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $APT_PKGS >/dev/null
    # The HA tests run their own keepalived per network namespace; the host's own service must not
    # run (it would speak VRRP on the host's interfaces). Debian enables it on install.
    case " $missing " in *" keepalived "*)
        if [ -d /run/systemd/system ]; then systemctl disable --now keepalived >/dev/null 2>&1 || true; fi ;;
    esac
fi

# Debian's interpreter, whatever PATH says (sudo resets it; a developer's may put another first).
BASE="${PYTHON:-/usr/bin/python3}"
if ! "$BASE" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "bootstrap: $BASE is missing or older than Python 3.11" >&2; exit 1
fi
VENV=.venv
PY="$VENV/bin/python"
if [ $force = 1 ] || ! "$PY" -c 'import sys' 2>/dev/null \
        || [ "$(cat "$VENV/.base" 2>/dev/null)" != "$("$BASE" -c 'import sys; print(sys.executable, sys.version)')" ]; then
    echo "bootstrap: python venv $VENV (from $BASE)"
    rm -rf "$VENV"
    "$BASE" -m venv "$VENV"
    "$BASE" -c 'import sys; print(sys.executable, sys.version)' > "$VENV/.base"
fi

mkdir -p .cache
stamp="$VENV/.bootstrap.stamp"
want=$(cat pyproject.toml tools/micropython/package.json tools/micropython/package-lock.json \
       tools/rp2040/package.json tools/rp2040/package-lock.json 2>/dev/null | sha256sum | cut -c1-16)
if [ $force = 1 ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] \
        || ! "$PY" -c "import host, firmware, invoke, serial, cryptography, hypothesis, scapy, vici" 2>/dev/null; then
    echo "bootstrap: pip install -e .[test] into $VENV"
    "$PY" -m pip install -q --disable-pip-version-check --upgrade pip
    "$PY" -m pip install -q --disable-pip-version-check -e '.[test]'
    if [ -f tools/micropython/package-lock.json ]; then
        # node trusts only its bundled CAs; a site's own (a TLS-inspecting proxy) lives in the system store
        [ -z "${NODE_EXTRA_CA_CERTS:-}" ] && [ -f /etc/ssl/certs/ca-certificates.crt ] \
            && export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
        echo "bootstrap: npm ci --prefix tools/micropython"
        npm ci --prefix tools/micropython --no-audit --no-fund --loglevel=error
    fi
    if [ -f tools/rp2040/package-lock.json ]; then
        # rp2040js: the emulated RP2040 board (tools/rp2040)
        echo "bootstrap: npm ci --prefix tools/rp2040"
        npm ci --prefix tools/rp2040 --no-audit --no-fund --loglevel=error
    fi
    echo "$want" > "$stamp"
fi
