"""Shared fixtures: throwaway SoftHSM tokens in a temporary directory, and CAs on them.

SOFTHSM2_CONF is pointed at a private config before python-pkcs11 first loads SoftHSM, so the
system's own tokens are never seen or touched. A missing SoftHSM fails the tests with an
install hint; it is never a silent skip.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOFTHSM_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)

_TOKEN_ROOT = Path(tempfile.mkdtemp(prefix="hsmca-softhsm-"))
for _name in ("HSMCA_PIN", "HSMCA_PFX_PASSWORD", "HSMCA_DIR", "HSMCA_MODULE"):
    os.environ.pop(_name, None)


def softhsm_module() -> str:
    for candidate in SOFTHSM_CANDIDATES:
        if os.path.isfile(candidate):
            return candidate
    pytest.fail("SoftHSM2 is not installed: apt-get install softhsm2 opensc", pytrace=False)


@dataclass(frozen=True)
class Token:
    label: str
    pin: str
    pin_file: Path
    serial: str
    conf: Path

    def pin_source(self, _info=None) -> str:
        return self.pin


def init_token(label: str, conf: Path) -> Token:
    """Initialise a fresh SoftHSM token labelled `label` in the slot set of `conf`."""
    if shutil.which("softhsm2-util") is None:
        pytest.fail("softhsm2-util is missing: apt-get install softhsm2", pytrace=False)
    pin = secrets.token_hex(8)
    so_pin = secrets.token_hex(8)
    env = dict(os.environ, SOFTHSM2_CONF=str(conf))
    before = _serials(label, env)
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            so_pin,
            "--pin",
            pin,
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    pin_file = conf.parent / f"pin-{secrets.token_hex(4)}"
    pin_file.write_text(pin + "\n")
    pin_file.chmod(0o600)
    if conf == SESSION_CONF:
        import pkcs11

        # python-pkcs11 loads the library once per process; new tokens appear after this.
        pkcs11.lib(softhsm_module()).reinitialize()
    # Labels may repeat (tests make twins on purpose): the new token is the new serial.
    (serial,) = _serials(label, env) - before
    return Token(label, pin, pin_file, serial, conf)


def _serials(label: str, env: dict) -> set[str]:
    shown = subprocess.run(
        ["softhsm2-util", "--show-slots"], env=env, check=True, capture_output=True, text=True
    ).stdout
    found, serial = set(), ""
    for line in shown.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "Serial number":
            serial = value.strip()
        elif key == "Label" and value.strip() == label:
            found.add(serial)
    return found


def softhsm_conf(directory: Path, mechanisms: str = "ALL") -> Path:
    """A private SoftHSM config with its own token directory (e.g. restricted mechanisms)."""
    (directory / "tokens").mkdir(parents=True, exist_ok=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        (REPO / "softhsm" / "softhsm2.conf.template")
        .read_text()
        .replace("@TOKENDIR@", str(directory / "tokens"))
        .replace("@MECHANISMS@", mechanisms)
    )
    return conf


SESSION_CONF = softhsm_conf(_TOKEN_ROOT)
os.environ["SOFTHSM2_CONF"] = str(SESSION_CONF)


@pytest.fixture(scope="session")
def module() -> str:
    return softhsm_module()


@pytest.fixture(scope="session")
def token_factory(module):
    """Make a new token with a unique label (or the label given) in the session's SoftHSM."""

    def make(label: str | None = None) -> Token:
        return init_token(
            label or f"hsmca-test-{secrets.token_hex(4)}", _TOKEN_ROOT / "softhsm2.conf"
        )

    return make


@pytest.fixture(scope="session")
def ca_factory(tmp_path_factory, module, token_factory):
    """A CA per key type, made once per test session through the library API."""
    from hsmca import api
    from hsmca.models import KeyType

    made: dict = {}

    def make(key_type: KeyType = KeyType.RSA2048):
        if key_type not in made:
            tok = token_factory()
            ca_dir = tmp_path_factory.mktemp(f"ca-{key_type.value}") / "ca"
            created = api.init_ca(
                ca_dir,
                module=module,
                token_spec=tok.label,
                pin_source=tok.pin_source,
                key_type=key_type,
            )
            made[key_type] = (ca_dir, tok, created)
        return made[key_type]

    return make


def assert_error(result, *fragments: str) -> None:
    """A CLI result that failed as users are promised: exit 1, one `Error:` line, no traceback."""
    output = result.output
    assert result.exit_code == 1, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    assert "Traceback" not in output
    for fragment in fragments:
        assert fragment in output, output


def tree(path: Path) -> dict[str, bytes]:
    """Every file below `path` with its bytes: to show that a refused command changed nothing."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_TOKEN_ROOT, ignore_errors=True)
