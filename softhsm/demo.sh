#!/usr/bin/env bash
# The main job on a throwaway SoftHSM token: a CA whose key is generated on the token, one
# recording-server PFX, and the result checked by OpenSSL.
#   bash softhsm/demo.sh [DIR]      (default DIR: ./demo in the repository; recreated each run)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
demo=${1:-$repo/demo}

bash "$repo/softhsm/bootstrap.sh"
hsmca=$repo/.venv/bin/hsmca

if [ -e "$demo" ]; then
    if [ ! -f "$demo/.hsmca-demo" ]; then
        echo "Error: $demo exists and is not a demo directory; give another DIR" >&2
        exit 1
    fi
    rm -rf "$demo"
fi
mkdir -p "$demo"
touch "$demo/.hsmca-demo"
demo=$(cd "$demo" && pwd)

for module in /usr/lib/softhsm/libsofthsm2.so /usr/lib/*-linux-gnu/softhsm/libsofthsm2.so; do
    [ -f "$module" ] && break
done
export HSMCA_MODULE=$module

echo "== a throwaway SoftHSM token"
"$repo/softhsm/new-token.sh" "$demo/token" "VMS Demo CA"
export SOFTHSM2_CONF=$demo/token/softhsm2.conf

echo
echo "== hsmca init: the CA key is generated on the token and never leaves it"
"$hsmca" init "$demo/ca" --token "VMS Demo CA" --pin-file "$demo/token/user.pin"

echo
echo "== hsmca issue: one recording server, as the Milestone guide's script does it"
(umask 077 && od -An -N12 -tx1 /dev/urandom | tr -d ' \n' > "$demo/pfx.password")
cd "$demo"
"$hsmca" issue --ca-dir ca --dns "rec1.example.com, rec1" --ip 10.0.0.103 \
    --password-file pfx.password --pin-file token/user.pin

echo
echo "== what OpenSSL sees in rec1.example.com.pfx"
openssl pkcs12 -in rec1.example.com.pfx -passin file:pfx.password -info -nokeys -clcerts \
    2>&1 >leaf.pem | grep -E "MAC|PBES2|Shrouded" || true
openssl x509 -in leaf.pem -noout -subject -issuer -dates -ext subjectAltName,extendedKeyUsage,keyUsage
openssl verify -x509_strict -purpose sslserver -verify_hostname rec1.example.com \
    -CAfile ca/ca.pem leaf.pem
openssl verify -x509_strict -purpose sslserver -verify_ip 10.0.0.103 -CAfile ca/ca.pem leaf.pem

echo
echo "Done. Everything is in $demo:"
echo "  ca/root-authority-public.cer  import on every client (Trusted Root Certification Authorities)"
echo "  rec1.example.com.pfx          import on the recording server (password in pfx.password)"
