#!/usr/bin/env bash
# Install what hsmca's demo and tests need on Debian 12, then a virtualenv in .venv.
# Safe to run again: it installs only what is missing. Used by demo.sh and tests/run.sh.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

missing=()
command -v softhsm2-util >/dev/null || missing+=(softhsm2)
command -v pkcs11-tool >/dev/null || missing+=(opensc)
command -v openssl >/dev/null || missing+=(openssl)
if [ "${HSMCA_WITH_JAVA:-0}" = 1 ] && ! command -v keytool >/dev/null; then
    missing+=(default-jdk-headless)
fi
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "Error: missing ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$repo/.venv/bin/python" ]; then
    python3 -m venv "$repo/.venv"
fi
"$repo/.venv/bin/python" -m pip install -q --disable-pip-version-check -e "$repo[test]"
