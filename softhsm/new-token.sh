#!/usr/bin/env bash
# Create a throwaway SoftHSM token in DIR without touching the system's SoftHSM config.
#
#   softhsm/new-token.sh DIR LABEL
#
# Writes DIR/softhsm2.conf and DIR/tokens/, initialises a token labelled LABEL with random
# user and SO PINs, and keeps the user PIN in DIR/user.pin (mode 0600) for --pin-file.
# Then: export SOFTHSM2_CONF=DIR/softhsm2.conf
# SOFTHSM_MECHANISMS (default ALL) restricts the mechanisms the token offers.
set -euo pipefail
if [ $# -ne 2 ]; then
    echo "usage: $0 DIR LABEL" >&2
    exit 2
fi
dir=$1
label=$2
command -v softhsm2-util >/dev/null || {
    echo "Error: softhsm2-util not found; install it with: apt-get install softhsm2" >&2
    exit 1
}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dir/tokens"
dir=$(cd "$dir" && pwd)
umask 077
if [ ! -f "$dir/softhsm2.conf" ]; then
    sed -e "s|@TOKENDIR@|$dir/tokens|" -e "s|@MECHANISMS@|${SOFTHSM_MECHANISMS:-ALL}|" \
        "$here/softhsm2.conf.template" > "$dir/softhsm2.conf"
fi
export SOFTHSM2_CONF=$dir/softhsm2.conf
if [ ! -f "$dir/user.pin" ]; then
    od -An -N8 -tx1 /dev/urandom | tr -d ' \n' > "$dir/user.pin"
fi
# softhsm2-util only takes PINs as arguments; these belong to a throwaway demo token.
so_pin=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
softhsm2-util --init-token --free --label "$label" --so-pin "$so_pin" --pin "$(cat "$dir/user.pin")" >/dev/null
echo "token '$label' created; export SOFTHSM2_CONF=$SOFTHSM2_CONF; user PIN in $dir/user.pin"
