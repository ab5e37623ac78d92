"""Shared helpers for the test_interop_* modules; this module holds no tests itself.

(Its name starts with test_interop only so that it lives beside the modules that use it.)

Everything here drives hsmca the way a user does: CAs come from the session's `ca_factory`
(real SoftHSM tokens), server PFX files from `hsmca.api.issue_server` or from the `hsmca issue`
command run as a separate process. Each PFX is issued once per session and shared: the
modules ask `shared_pki(...)` for it, which caches across modules.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import ssl
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509 as cx509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from hsmca.models import KeyType

# What the recording servers in these tests are called (as in Milestone's guide, plus IPv6).
DNS_NAMES = ("rec1.example.com", "rec1-alt.example.com")
IP_ADDRESSES = ("10.0.0.103", "fd00::103")
WRONG_NAME = "rec2.example.com"
WRONG_IP = "10.0.0.104"
# Spaces and punctuation on purpose: every tool must read the same password from a file.
PASSWORD = "Rec0rder pfx, pass!"
FRIENDLY_NAME = b"VMS Recorder Certificate"
CA_CERT_DER = "root-authority-public.cer"
CA_CERT_PEM = "ca.pem"
TIMEOUT = 60  # seconds for any external tool; they normally take well under one

CA_TYPES = (KeyType.RSA2048, KeyType.P256, KeyType.P384)
SERVER_TYPES = (KeyType.RSA2048, KeyType.P256)

CLI = [sys.executable, "-c", "from hsmca.cli import main; main()"]


def run(args, *, check: bool = False, timeout: float = TIMEOUT, text: bool = True, **kwargs):
    """Run an external tool; text output unless text=False, bounded time, never a shell."""
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=text, timeout=timeout, **kwargs
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{args[0]} exited {result.returncode}\nstdout:\n{result.stdout}\n"
            f"stderr:\n{result.stderr}"
        )
    return result


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: no HSMCA_* secrets unless given here."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HSMCA_")}
    env.update(extra)
    return env


@dataclass(frozen=True)
class Issued:
    """One server PFX and everything a test needs to judge it."""

    ca_type: KeyType
    server_type: KeyType
    legacy: bool
    via: str  # "api" or "cli"
    path: Path
    password: str
    password_file: Path
    ca_dir: Path
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]

    @property
    def id(self) -> str:
        flavour = "legacy" if self.legacy else "aes"
        return f"ca-{self.ca_type.value}-srv-{self.server_type.value}-{flavour}-{self.via}"

    @property
    def ca_der(self) -> bytes:
        return (self.ca_dir / CA_CERT_DER).read_bytes()

    @property
    def ca_pem_path(self) -> Path:
        return self.ca_dir / CA_CERT_PEM

    def load(self):
        """The PFX opened by cryptography: (key, certificate, additional certificates)."""
        return pkcs12.load_pkcs12(self.path.read_bytes(), self.password.encode())

    @functools.cached_property
    def bundle(self):
        """The PFX opened once and kept for the session (opening costs the KDF rounds)."""
        return self.load()

    def leaf(self) -> cx509.Certificate:
        return self.bundle.cert.certificate

    def write_server_files(self, directory: Path) -> tuple[Path, Path]:
        """Key and certificate PEM for a TLS server, written into a test's own tmp_path."""
        bundle = self.bundle
        key_path = directory / f"{self.id}.key.pem"
        cert_path = directory / f"{self.id}.crt.pem"
        key_path.touch(mode=0o600)
        key_path.write_bytes(
            bundle.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        cert_path.write_bytes(bundle.cert.certificate.public_bytes(serialization.Encoding.PEM))
        return key_path, cert_path


class Pki:
    """The CAs of the session (one per key type) and the PFX files issued under them."""

    def __init__(self, ca_factory, root: Path):
        self._ca_factory = ca_factory
        self.root = root
        self._issued: dict[tuple, Issued] = {}
        self.password_file = root / "pfx-password.txt"
        # A trailing newline, as an editor writes it; it is not part of the password.
        self.password_file.write_text(PASSWORD + "\n")
        self.password_file.chmod(0o600)

    def ca(self, ca_type: KeyType):
        """(ca_dir, token, created) from the session fixture."""
        return self._ca_factory(ca_type)

    def pfx(
        self,
        ca_type: KeyType = KeyType.RSA2048,
        server_type: KeyType = KeyType.RSA2048,
        legacy: bool = False,
        via: str = "api",
        dns_names: tuple[str, ...] = DNS_NAMES,
        ip_addresses: tuple[str, ...] = IP_ADDRESSES,
    ) -> Issued:
        key = (ca_type, server_type, legacy, via, dns_names, ip_addresses)
        if key not in self._issued:
            self._issued[key] = self._issue(*key)
        return self._issued[key]

    def _issue(self, ca_type, server_type, legacy, via, dns_names, ip_addresses) -> Issued:
        ca_dir, tok, _created = self.ca(ca_type)
        name = f"{ca_type.value}-{server_type.value}-{'legacy' if legacy else 'aes'}-{via}"
        out = self.root / f"{name}-{len(self._issued)}.pfx"
        if via == "api":
            from hsmca import api, x509build

            request = x509build.server_request(dns_names, ip_addresses, 365, server_type)
            api.issue_server(
                ca_dir,
                request,
                password=PASSWORD,
                pin_source=tok.pin_source,
                out=out,
                legacy=legacy,
            )
        elif via == "cli":
            args = [
                *CLI,
                "issue",
                "--ca-dir",
                ca_dir,
                "--dns",
                ", ".join(dns_names),
                "--ip",
                ",".join(ip_addresses),
                "--key-type",
                server_type.value,
                "--password-file",
                self.password_file,
                "--pin-file",
                tok.pin_file,
                "--out",
                out,
            ]
            if legacy:
                args.append("--legacy-pfx")
            result = run(args, check=True, env=clean_env(), cwd=self.root)
            assert result.stdout.startswith(f"Wrote {out}"), result.stdout
            printed = result.stdout + result.stderr
            assert tok.pin not in printed and PASSWORD not in printed
        else:
            raise ValueError(via)
        assert out.stat().st_mode & 0o777 == 0o600
        return Issued(
            ca_type,
            server_type,
            legacy,
            via,
            out,
            PASSWORD,
            self.password_file,
            ca_dir,
            tuple(dns_names),
            tuple(ip_addresses),
        )


_PKI: list[Pki] = []


def shared_pki(ca_factory, tmp_path_factory) -> Pki:
    """One Pki for the whole session, whichever interop module asks first."""
    if not _PKI:
        _PKI.append(Pki(ca_factory, tmp_path_factory.mktemp("interop")))
    return _PKI[0]


# --- a TLS server on loopback ------------------------------------------------------------------

GREETING = b"hsmca-interop-ok\n"


class TlsServer:
    """A Python ssl server thread on 127.0.0.1 serving one certificate and key.

    Each connection gets a handshake, GREETING, and is closed once the client hangs up.
    Handshake failures (a client that rejects the certificate) are recorded, not raised.
    """

    def __init__(self, cert_path: Path, key_path: Path):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(cert_path, key_path)
        self.handshakes: list[str] = []
        self.failures: list[Exception] = []
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="interop-tls", daemon=True)

    def __enter__(self) -> TlsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._sock.close()
        assert not self._thread.is_alive(), "the TLS server thread did not stop"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    with self.context.wrap_socket(conn, server_side=True) as tls:
                        self.handshakes.append(tls.version() or "")
                        tls.sendall(GREETING)
                        # Wait for the client to hang up, so no unread data turns into a reset.
                        with contextlib.suppress(OSError):
                            tls.recv(64)
                except (OSError, ssl.SSLError) as exc:
                    self.failures.append(exc)


def client_context(ca_der: bytes) -> ssl.SSLContext:
    """A TLS client that trusts exactly one CA (the exported DER file) and checks names."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=ssl.DER_cert_to_PEM_cert(ca_der))
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert context.cert_store_stats()["x509_ca"] == 1
    return context


def tls_connect(context: ssl.SSLContext, port: int, server_hostname: str) -> dict:
    """Handshake with the server on 127.0.0.1:port; returns the verified peer certificate."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=server_hostname) as tls:
            peer = tls.getpeercert()
            data = b""
            while not data.endswith(b"\n"):
                chunk = tls.recv(64)
                if not chunk:
                    break
                data += chunk
            assert data == GREETING
            return peer
