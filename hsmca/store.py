"""The CA directory on disk: its config file, its public files, and atomic writers.

Every output is written to a temporary file in the target directory, flushed, and then linked
or renamed into place, so a reader never sees half a file and an existing file is never
overwritten unless the caller asked for that.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import HsmcaError, InvalidRequest, OutputExists
from .models import CaConfig, KeyType

CONFIG_NAME = "hsmca.toml"
CA_CERT_DER_NAME = "root-authority-public.cer"
CA_CERT_PEM_NAME = "ca.pem"
THUMBPRINT_NAME = "ca_thumbprint.txt"
CHAIN_PEM_NAME = "chain.pem"
"""The certificates above a subordinate CA, up to the root (absent for a root CA)."""
CSR_NAME = "ca.csr"
"""A pending subordinate CA's request, for the root to sign."""
CONFIG_FORMAT = 1

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644


# --- atomic writes -----------------------------------------------------------------------------


def check_output(path: Path, force: bool) -> None:
    """Refuse an output path that is a directory, or an existing file without `force`."""
    if path.is_dir():
        raise InvalidRequest(f"{path} is a directory; give a file name for the output")
    if not force and path.exists():
        raise OutputExists(f"{path} already exists; use --force to replace it, or write elsewhere")


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) back until the block is done, then raise it: files, and the records
    that describe them, are never left halfway (a temporary file, a row without its mark).

    Only the main thread receives signals; elsewhere this does nothing. Blocks may nest.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda _signum, frame: received.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and callable(previous):
            previous(signal.SIGINT, received[-1])


@interrupts_deferred()
def write_file(path: Path, data: bytes, mode: int = PUBLIC_MODE, force: bool = False) -> None:
    """Atomically create `path` with `data`; refuse an existing file unless `force`."""
    path = Path(path)
    check_output(path, force)
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HsmcaError(f"cannot create the folder {parent}: {exc.strerror}") from None
    temporary = None
    try:
        try:
            import tempfile  # here, not at the top: monitoring commands never write

            fd, temporary = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
        except OSError as exc:
            raise HsmcaError(f"cannot write in {parent}: {exc.strerror}") from None
        with os.fdopen(fd, "wb") as stream:
            os.fchmod(stream.fileno(), mode)
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        _publish(Path(temporary), path, force)
        sync_directory(parent)
    except FileExistsError:
        raise OutputExists(
            f"{path} already exists; use --force to replace it, or write elsewhere"
        ) from None
    except OSError as exc:
        raise HsmcaError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        # Also after Ctrl-C: no temporary file is left behind.
        if temporary is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)


def _publish(temporary: Path, path: Path, force: bool) -> None:
    if force:
        os.replace(temporary, path)
        return
    try:
        # link() fails if `path` exists, so a file that appeared meanwhile is never clobbered.
        os.link(temporary, path)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
        # File systems without hard links: reserve the name exclusively, then replace it.
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        try:
            os.replace(temporary, path)
        except BaseException:
            # Not replaced (an error, Ctrl-C): remove the empty placeholder made above, never
            # a file with data in it.
            with contextlib.suppress(OSError):
                if path.stat().st_size == 0:
                    path.unlink()
            raise


def sync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- the CA directory --------------------------------------------------------------------------


def check_new_ca_dir(ca_dir: Path) -> None:
    """Refuse a CA directory that exists and is not empty, before anything else happens."""
    if ca_dir.exists():
        if not ca_dir.is_dir():
            raise InvalidRequest(f"{ca_dir} exists and is not a directory; choose another CA_DIR")
        if any(ca_dir.iterdir()):
            raise InvalidRequest(f"{ca_dir} is not empty; a new CA needs an empty or new directory")


def create_ca_dir(
    ca_dir: Path,
    files: dict[str, tuple[bytes, int]],
    populate: Callable[[Path], None] | None = None,
) -> None:
    """Create `ca_dir` holding `files` (name -> (data, mode)) all at once, or not at all.

    The files are written into a hidden sibling directory, `populate` may add more there (the
    database), and the directory is renamed into place, so an interrupted init leaves no
    half-made CA directory behind.
    """
    ca_dir = ca_dir.absolute()
    check_new_ca_dir(ca_dir)
    try:
        ca_dir.parent.mkdir(parents=True, exist_ok=True)
        import tempfile

        staging = Path(tempfile.mkdtemp(dir=ca_dir.parent, prefix=f".{ca_dir.name}."))
    except OSError as exc:
        raise HsmcaError(f"cannot create {ca_dir}: {exc.strerror}") from None
    try:
        os.chmod(staging, 0o755)  # noqa: S103 (CA_DIR holds public files; mkdtemp made it 0700)
        for name, (data, mode) in files.items():
            write_file(staging / name, data, mode)
        if populate is not None:
            populate(staging)
        # rename() onto an empty directory replaces it; onto a non-empty one it fails.
        os.rename(staging, ca_dir)
        sync_directory(ca_dir.parent)
    except OSError as exc:
        raise HsmcaError(f"cannot create {ca_dir}: {exc.strerror}") from None
    finally:
        if staging.exists():
            import shutil

            shutil.rmtree(staging, ignore_errors=True)


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    escaped = "".join(ch if ch >= " " and ch != "\x7f" else f"\\u{ord(ch):04x}" for ch in escaped)
    return f'"{escaped}"'


def render_config(config: CaConfig) -> bytes:
    lines = [
        "# hsmca CA directory. The CA private key is on the token below and never leaves it.",
        f"format = {CONFIG_FORMAT}",
        "",
        "[token]",
        f"module = {_toml_string(config.module)}",
        f"label = {_toml_string(config.token_label)}",
        f"serial = {_toml_string(config.token_serial)}",
        "",
        "[key]",
        f"label = {_toml_string(config.key_label)}",
        f"id = {_toml_string(config.key_id.hex())}",
        f"type = {_toml_string(config.key_type.value)}",
        f"public_key = {_toml_string(config.public_key.hex())}",
        "",
        "[ca]",
        f"state = {_toml_string(config.state)}",
        "",
    ]
    return "\n".join(lines).encode("utf-8")


def load_config(ca_dir: Path) -> CaConfig:
    """Read CA_DIR/hsmca.toml; a clear error when the directory is not a CA directory."""
    path = ca_dir / CONFIG_NAME
    if not ca_dir.is_dir():
        raise InvalidRequest(
            f"CA directory {ca_dir} does not exist; pass --ca-dir or set HSMCA_DIR "
            "(create one with 'hsmca init')"
        )
    try:
        with open(path, "rb") as stream:
            data = tomllib.load(stream)
    except FileNotFoundError:
        raise InvalidRequest(
            f"{ca_dir} is not an hsmca CA directory (no {CONFIG_NAME}); pass --ca-dir or set "
            "HSMCA_DIR"
        ) from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"cannot read {path}: {exc}") from None
    try:
        if data.get("format") != CONFIG_FORMAT:
            raise ValueError(f"unsupported format {data.get('format')!r}")
        token, key = data["token"], data["key"]
        return CaConfig(
            module=str(token["module"]),
            token_label=str(token["label"]),
            token_serial=str(token["serial"]),
            key_label=str(key["label"]),
            key_id=bytes.fromhex(key["id"]),
            key_type=KeyType(key["type"]),
            public_key=bytes.fromhex(key.get("public_key", "")),
            state=str(data.get("ca", {}).get("state", "active")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidRequest(f"{path} is damaged or not hsmca's ({exc}); restore it") from None


def _read_pem_certificates(path: Path) -> list[bytes]:
    from asn1crypto import pem

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidRequest(f"cannot read {path}: {exc.strerror}") from None
    try:
        return [der for kind, _, der in pem.unarmor(data, multiple=True) if kind == "CERTIFICATE"]
    except ValueError:
        raise InvalidRequest(f"{path} is not PEM; restore it") from None


def read_ca_chain(ca_dir: Path) -> list[bytes]:
    """The issuing CA's certificate (ca.pem), then those above it (chain.pem) up to the root."""
    (certificate, *_) = _read_pem_certificates(ca_dir / CA_CERT_PEM_NAME) or [None]
    if certificate is None:
        raise InvalidRequest(f"{ca_dir / CA_CERT_PEM_NAME} holds no certificate; restore it")
    above = ca_dir / CHAIN_PEM_NAME
    return [certificate, *(_read_pem_certificates(above) if above.exists() else [])]
