"""Scratch benchmark of the pure builders (no token): leaf TBS plain vs prepared, CRLs.

    python3 bench/pure_build.py [--leaves N] [--crl-sizes 10000,100000] [--plain-crl-max 10000]
                                [--no-openssl]

Prints per-item costs (medians of several rounds, wall clock on a shared machine, so compare
figures from the same run), and for the CRL sizes also `openssl ca -gencrl` with a software key
on the same revocation list, for a same-machine reference.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asn1crypto import crl, keys, pem
from cryptography.hazmat.primitives import serialization

from hsmca import crlbuild, signing, x509build
from hsmca.leaftemplate import LeafTemplate
from hsmca.models import KeyType

UTC = dt.UTC


def median_seconds(function, rounds: int = 5) -> float:
    timings = []
    for _ in range(rounds):
        start = time.perf_counter()
        function()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def make_ca(key_type: KeyType):
    ca_signer = signing.SoftwareSigner(key_type)
    not_before, not_after = x509build.validity(3650)
    tbs = x509build.ca_tbs(
        x509build.parse_subject("CN=VMS Certificate Authority,O=Example"),
        ca_signer.public_key,
        key_type,
        x509build.random_serial(),
        not_before,
        not_after,
    )
    certificate, _ = signing.sign_certificate(tbs, ca_signer, ca_signer.public_key)
    return ca_signer, certificate


def bench_leaves(count: int) -> None:
    print(f"== leaf TBS build, per certificate ({count} per round, median of 5 rounds)")
    ca_signer, ca = make_ca(KeyType.RSA2048)
    template = LeafTemplate(ca, KeyType.RSA2048)
    not_before, not_after = x509build.validity(365)
    for leaf_type in (KeyType.RSA2048, KeyType.P256):
        spki = signing.SoftwareSigner(leaf_type).public_key.dump()
        requests = [
            x509build.server_request(
                [f"rec{i}.site.example.com", f"rec{i}"],
                [f"10.0.{i // 250}.{i % 250 + 1}"],
                365,
                leaf_type,
            )
            for i in range(count)
        ]
        serials = [x509build.random_serial() for _ in range(count)]

        def plain(requests=requests, serials=serials, spki=spki):
            for request, serial in zip(requests, serials, strict=True):
                x509build.server_tbs(
                    request,
                    keys.PublicKeyInfo.load(spki),
                    ca,
                    KeyType.RSA2048,
                    serial,
                    not_before,
                    not_after,
                ).dump()

        def fast(requests=requests, serials=serials, spki=spki):
            for request, serial in zip(requests, serials, strict=True):
                template.tbs_der(request, spki, serial, not_before, not_after)

        def fast_loaded(requests=requests, serials=serials, spki=spki):
            for request, serial in zip(requests, serials, strict=True):
                template.tbs(request, spki, serial, not_before, not_after)

        plain_cost = median_seconds(plain) / count
        fast_cost = median_seconds(fast) / count
        loaded_cost = median_seconds(fast_loaded) / count
        print(
            f"  subject key {leaf_type.value:8} plain server_tbs().dump(): "
            f"{plain_cost * 1e3:7.3f} ms   template.tbs_der(): {fast_cost * 1e3:7.3f} ms   "
            f"template.tbs(): {loaded_cost * 1e3:7.3f} ms   speed-up x{plain_cost / fast_cost:.0f}"
        )

    tbs_der = template.tbs_der(requests[0], spki, serials[0], not_before, not_after)
    rounds = 200
    sign = median_seconds(lambda: [ca_signer.sign(tbs_der) for _ in range(rounds)]) / rounds
    force = (
        median_seconds(
            lambda: [
                template.tbs(requests[0], spki, 5, not_before, not_after).dump(force=True)
                for _ in range(rounds)
            ]
        )
        / rounds
    )
    print(
        f"  for scale: RSA-2048 software signature {sign * 1e3:.3f} ms; "
        f"TbsCertificate.dump(force=True) on a loaded TBS (what sign_certificate does) "
        f"{force * 1e3:.3f} ms"
    )
    certificate_der = template.certificate_der(tbs_der, ca_signer.sign(tbs_der))
    from hsmca import lint

    lint_rounds = 20
    lint_cost = (
        median_seconds(
            lambda: [lint.certificate_findings(certificate_der) for _ in range(lint_rounds)], 3
        )
        / lint_rounds
    )
    print(f"  pkilint of one leaf (lint.certificate_findings): {lint_cost * 1e3:.3f} ms")


def revocations(count: int, seed: int = 7):
    rng = random.Random(seed)
    base = dt.datetime(2024, 1, 1, tzinfo=UTC)
    reasons = list(crlbuild.RevocationReason)
    return [
        (
            rng.getrandbits(159) | (1 << 64),
            base + dt.timedelta(seconds=rng.randrange(10**8)),
            rng.choice(reasons),
        )
        for _ in range(count)
    ]


def plain_crl_tbs(ca, key_type, revoked, this_update):
    entries = []
    for serial, when, reason in sorted(revoked):
        entry = {"user_certificate": serial, "revocation_date": x509build._time(when)}
        if reason is not crlbuild.RevocationReason.UNSPECIFIED:
            entry["crl_entry_extensions"] = [
                {"extn_id": "crl_reason", "extn_value": crl.CRLReason(reason.code)}
            ]
        entries.append(entry)
    return crl.TbsCertList(
        {
            "version": "v2",
            "signature": x509build.signature_algorithm(key_type),
            "issuer": ca.subject,
            "this_update": x509build._time(this_update),
            "next_update": x509build._time(this_update + dt.timedelta(days=7)),
            "revoked_certificates": entries,
            "crl_extensions": [
                {
                    "extn_id": "authority_key_identifier",
                    "extn_value": {"key_identifier": ca.key_identifier},
                },
                {"extn_id": "crl_number", "extn_value": 1},
            ],
        }
    )


def openssl_gencrl(ca_signer, ca, revoked) -> float | None:
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    with tempfile.TemporaryDirectory(prefix="hsmca-bench-") as folder:
        root = Path(folder)
        key_pem = ca_signer.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        (root / "ca.key").write_bytes(key_pem)
        (root / "ca.pem").write_bytes(pem.armor("CERTIFICATE", ca.dump()))
        openssl_reasons = {
            "unspecified": "unspecified",
            "keyCompromise": "keyCompromise",
            "affiliationChanged": "affiliationChanged",
            "superseded": "superseded",
            "cessationOfOperation": "cessationOfOperation",
        }
        lines = []
        for serial, when, reason in revoked:
            stamp = when.strftime("%y%m%d%H%M%SZ")
            serial_hex = f"{serial:X}"
            serial_hex = "0" * (len(serial_hex) % 2) + serial_hex  # openssl wants whole octets
            lines.append(
                f"R\t301231000000Z\t{stamp},{openssl_reasons[reason.value]}\t"
                f"{serial_hex}\tunknown\t/CN=rec{serial % 1000}\n"
            )
        (root / "index.txt").write_text("".join(lines))
        (root / "index.txt.attr").write_text("unique_subject = no\n")
        (root / "crlnumber").write_text("01\n")
        (root / "ca.cnf").write_text(
            "[ ca ]\ndefault_ca = CA_default\n[ CA_default ]\n"
            f"dir = {root}\ndatabase = $dir/index.txt\ncrlnumber = $dir/crlnumber\n"
            "certificate = $dir/ca.pem\nprivate_key = $dir/ca.key\n"
            "default_md = sha256\ndefault_crl_days = 7\ncrl_extensions = crl_ext\n"
            "[ crl_ext ]\nauthorityKeyIdentifier = keyid:always\n"
        )
        command = [
            openssl,
            "ca",
            "-gencrl",
            "-config",
            str(root / "ca.cnf"),
            "-out",
            str(root / "crl.pem"),
            "-batch",
        ]
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - start
        if result.returncode != 0:
            print(f"  openssl ca -gencrl failed: {result.stderr.strip()[:200]}")
            return None
        return elapsed


def bench_crls(sizes, plain_max: int, with_openssl: bool) -> None:
    print("== CRL build (TBS build + dump, excluding the signature; median of 5 rounds)")
    ca_signer, ca = make_ca(KeyType.RSA2048)
    this_update = x509build.utc_now()
    for size in sizes:
        revoked = revocations(size)
        fast = median_seconds(
            lambda revoked=revoked: crlbuild.tbs_cert_list(
                ca, KeyType.RSA2048, 1, revoked, 7, this_update
            ).dump()
        )
        tbs = crlbuild.tbs_cert_list(ca, KeyType.RSA2048, 1, revoked, 7, this_update)
        tbs_der = tbs.dump()
        signed = median_seconds(
            lambda tbs=tbs, tbs_der=tbs_der: crlbuild.certificate_list(
                tbs, KeyType.RSA2048, ca_signer.sign(tbs_der)
            ).dump()
        )
        line = (
            f"  {size:>7} entries: fast {fast:.3f} s ({fast / size * 1e6:.2f} us/entry), "
            f"+ sign and assemble {signed:.3f} s, {len(tbs_der) / 1e6:.1f} MB"
        )
        if size <= plain_max:
            plain = median_seconds(
                lambda revoked=revoked: plain_crl_tbs(
                    ca, KeyType.RSA2048, revoked, this_update
                ).dump(),
                rounds=1,
            )
            line += f"; plain asn1crypto {plain:.2f} s (x{plain / fast:.0f})"
        if with_openssl:
            elapsed = openssl_gencrl(ca_signer, ca, revoked)
            if elapsed is not None:
                line += f"; openssl ca -gencrl {elapsed:.3f} s (process, software key)"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=2000)
    parser.add_argument("--crl-sizes", default="10000,100000")
    parser.add_argument(
        "--plain-crl-max",
        type=int,
        default=10000,
        help="build the plain asn1crypto CRL only up to this size (slow)",
    )
    parser.add_argument("--no-openssl", action="store_true")
    args = parser.parse_args()
    bench_leaves(args.leaves)
    sizes = [int(size) for size in args.crl_sizes.split(",") if size]
    bench_crls(sizes, args.plain_crl_max, not args.no_openssl)


if __name__ == "__main__":
    main()
