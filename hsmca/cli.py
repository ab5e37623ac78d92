"""The `hsmca` command: parses, prompts and prints; the work is done by `hsmca.api`.

Heavy modules (pkcs11, cryptography, pkilint) are imported inside the commands that need them,
so `hsmca --help` starts fast.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import click

from . import __version__
from .errors import HsmcaError

PIN_ENV = "HSMCA_PIN"
PASSWORD_ENV = "HSMCA_PFX_PASSWORD"  # noqa: S105 (a variable name, not a secret)
MODULE_ENV = "HSMCA_MODULE"
CA_DIR_ENV = "HSMCA_DIR"
DEBUG_ENV = "HSMCA_DEBUG"

CA_KEY_CHOICES = ["rsa2048", "rsa3072", "rsa4096", "p256", "p384"]
SERVER_KEY_CHOICES = ["rsa2048", "rsa3072", "p256", "p384"]

DNS_PROMPT = (
    "DNS names for recording server certificate "
    "(comma delimited - 1st entry is also subject of certificate)"
)
IP_PROMPT = "IP addresses for recording server certificate (comma delimited)"


class HsmcaGroup(click.Group):
    """Turns every HsmcaError into one line `Error: ...` and exit status 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except HsmcaError as exc:
            raise click.ClickException(str(exc)) from None
        except (click.exceptions.Exit, click.ClickException):
            raise
        except (KeyboardInterrupt, click.Abort):
            raise click.ClickException(
                "interrupted; any file already written is complete and recorded, none is "
                "half-written ('hsmca list' shows what was issued)"
            ) from None
        except Exception as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            raise click.ClickException(
                f"unexpected {type(exc).__name__}: {exc} (set {DEBUG_ENV}=1 for a traceback)"
            ) from None


# --- secrets -----------------------------------------------------------------------------------


def _read_secret_file(path: Path, what: str) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise HsmcaError(f"cannot read the {what} file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise HsmcaError(f"the {what} file {path} is not UTF-8 text") from None
    # A file's trailing newline is not part of the secret; anything else is.
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise HsmcaError(f"the {what} file {path} is empty")
    return text


def _secret(
    path: Path | None, env: str, what: str, option: str, prompt: str, confirm: bool = False
) -> str:
    if path is not None:
        return _read_secret_file(path, what)
    value = os.environ.get(env)
    if value:
        return value
    if not sys.stdin.isatty():
        raise HsmcaError(
            f"no {what} given and no terminal to ask on: use {option} FILE or set {env}"
        )
    return click.prompt(prompt, hide_input=True, confirmation_prompt=confirm, err=True)


def pin_source(pin_file: Path | None):
    """A PinSource for the token layer: asks only when a login happens, and only once."""
    remembered: dict[str, str] = {}

    def source(info) -> str | None:
        if info.pin_final_try:
            click.echo(f"Warning: one more wrong PIN locks {info}.", err=True)
        elif info.pin_count_low:
            click.echo(
                f"Warning: a wrong PIN was entered on {info} since the last login.", err=True
            )
        if info.protected_auth_path:
            click.echo(f"Enter the user PIN for {info} on the reader's PIN pad.", err=True)
            return None
        # Keys that need the PIN before every signature must not prompt every time.
        if info.serial not in remembered:
            remembered[info.serial] = _secret(
                pin_file, PIN_ENV, "token PIN", "--pin-file", f"User PIN for {info}"
            )
        return remembered[info.serial]

    return source


def pfx_password(password_file: Path | None) -> str:
    return _secret(
        password_file,
        PASSWORD_ENV,
        "PFX password",
        "--password-file",
        "Recording server certificate password",
        confirm=True,
    )


# --- shared options ----------------------------------------------------------------------------


def pin_file_option(function):
    return click.option(
        "--pin-file",
        type=click.Path(dir_okay=False, path_type=Path),
        help=f"File holding the token's user PIN (else ${PIN_ENV}, else a hidden prompt).",
    )(function)


def ca_dir_option(function):
    return click.option(
        "--ca-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar=CA_DIR_ENV,
        default=".",
        show_default="$HSMCA_DIR, else the current directory",
        help="The CA directory made by 'hsmca init'.",
    )(function)


def module_option(function):
    return click.option(
        "--module",
        envvar=MODULE_ENV,
        help=f"PKCS#11 library (else ${MODULE_ENV}), e.g. /usr/lib/softhsm/libsofthsm2.so.",
    )(function)


def json_option(function):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(function)


def password_file_option(function):
    return click.option(
        "--password-file",
        type=click.Path(dir_okay=False, path_type=Path),
        help=f"File holding the PFX password (else ${PASSWORD_ENV}, else a hidden prompt).",
    )(function)


def legacy_option(function):
    return click.option(
        "--legacy-pfx",
        is_flag=True,
        help="3DES/SHA-1 PFX for Windows Server 2016 and Windows 10 before 1709.",
    )(function)


def _module(module: str | None, selector) -> str:
    """--module, else the URI's module-path, else $HSMCA_MODULE: the most specific wins."""
    from click.core import ParameterSource

    given = click.get_current_context().get_parameter_source("module")
    if selector.module_path and given != ParameterSource.COMMANDLINE:
        return selector.module_path
    return module or ""


def _key_type(value: str):
    from .models import KeyType

    return KeyType(value)


# --- commands ----------------------------------------------------------------------------------


@click.group(cls=HsmcaGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hsmca")
def cli() -> None:
    """A certificate authority whose private key never leaves a PKCS#11 token."""
    from . import locking

    locking.notify_waits(lambda message: click.echo(f"{message} ...", err=True))


@cli.command()
@click.argument("ca_dir", type=click.Path(file_okay=False, path_type=Path))
@module_option
@click.option(
    "--token",
    "token_spec",
    help="The token's label, or a PKCS#11 URI (pkcs11:token=...;serial=...).",
)
@click.option("--key-label", default="hsmca-ca", show_default=True, help="Label of the CA key.")
@click.option("--key-type", type=click.Choice(CA_KEY_CHOICES), default="rsa3072", show_default=True)
@click.option(
    "--subject",
    default="CN=VMS Certificate Authority",
    show_default=True,
    help="The CA's distinguished name (RFC 4514).",
)
@click.option("--days", type=int, default=3650, show_default=True, help="Validity of the CA.")
@click.option(
    "--always-authenticate",
    is_flag=True,
    help="Make the token require the PIN again before every signature (CKA_ALWAYS_AUTHENTICATE).",
)
@click.option(
    "--signature-scheme",
    type=click.Choice(["pkcs1v15", "pss"]),
    default="pkcs1v15",
    show_default=True,
    help="How an RSA root signs its own certificate; pss where the token offers RSA-PSS.",
)
@click.option(
    "--subordinate",
    is_flag=True,
    help="Make an issuing CA: write CA_DIR/ca.csr for the root to sign (hsmca sign-ca).",
)
@click.option(
    "--certificate",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Complete a pending subordinate CA_DIR with the certificate the root signed.",
)
@click.option(
    "--chain",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --certificate: the root certificate, if the file does not hold it.",
)
@pin_file_option
def init(
    ca_dir,
    module,
    token_spec,
    key_label,
    key_type,
    subject,
    days,
    always_authenticate,
    signature_scheme,
    subordinate,
    certificate,
    chain,
    pin_file,
) -> None:
    """Generate the CA key on the token and create CA_DIR (a root, or a subordinate CA).

    \b
    Root:        hsmca init DIR --token LABEL [--key-type ...] [--subject DN]
    Subordinate: hsmca init DIR --token LABEL --subordinate --subject DN
                 (the root runs: hsmca sign-ca DIR/ca.csr --ca-dir ROOT_DIR --out sub.pem)
                 hsmca init DIR --certificate sub.pem
    """
    from . import api
    from .p11uri import parse_token_spec

    if certificate is not None:
        if token_spec or subordinate:
            raise HsmcaError(
                "--certificate completes an existing pending CA_DIR; leave out "
                "--token and --subordinate"
            )
        completed = api.complete_subordinate(
            ca_dir, certificate, pin_source=pin_source(pin_file), chain_file=chain
        )
        click.echo(f"Completed subordinate CA in {completed.ca_dir}")
        click.echo(f"  issued by:  {completed.root_subject}")
        click.echo(f"  thumbprint: {completed.thumbprint}")
        click.echo(
            "  trust it:   root-authority-public.cer (the root) on each client, as for a root CA"
        )
        return
    if chain is not None:
        raise HsmcaError("--chain goes with --certificate")
    if not token_spec:
        raise HsmcaError("no token given: use --token LABEL (or a pkcs11: URI)")
    selector = parse_token_spec(token_spec)
    created = api.init_ca(
        ca_dir,
        module=_module(module, selector),
        token_spec=token_spec,
        pin_source=pin_source(pin_file or selector.pin_file()),
        key_label=key_label,
        key_type=_key_type(key_type),
        subject=subject,
        days=days,
        always_authenticate=always_authenticate,
        subordinate=subordinate,
        signature_scheme=signature_scheme,
    )
    attributes = ", ".join(f"{name}={value}" for name, value in created.key_attributes.items())
    kind = "subordinate CA (pending)" if subordinate else "CA"
    click.echo(f"Created {kind} in {created.ca_dir}")
    click.echo(
        f"  key:        {key_type} '{key_label}' (id {created.key_id.hex()}) on {created.token}"
    )
    click.echo(f"  key checks: {attributes}; a test signature verified on this host")
    if subordinate:
        click.echo(f"  request:    {created.csr_path}")
        click.echo(
            f"  next:       hsmca sign-ca {created.csr_path} --ca-dir ROOT_DIR --out sub.pem, "
            f"then hsmca init {created.ca_dir} --certificate sub.pem"
        )
        return
    click.echo(f"  thumbprint: {created.thumbprint}")
    click.echo(
        "  trust it:   copy root-authority-public.cer to each client and import it into "
        "Trusted Root Certification Authorities"
    )


@cli.command(name="sign-ca")
@ca_dir_option
@click.argument("csr_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--path-length", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--days", type=int, default=1825, show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output PEM: the new CA certificate, then this CA's chain "
    "(default: <CSR name>-certificate.pem).",
)
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option(
    "--signature-scheme",
    type=click.Choice(["pkcs1v15", "pss"]),
    default="pkcs1v15",
    show_default=True,
    help="How an RSA root signs the CA certificate; pss where the token offers RSA-PSS.",
)
@pin_file_option
def sign_ca(ca_dir, csr_file, path_length, days, out, force, signature_scheme, pin_file) -> None:
    """This (root) CA signs a subordinate CA's request from 'hsmca init --subordinate'."""
    from . import api, x509build
    from .db import rfc4514, serial_hex

    certificate, path, notes = api.sign_ca(
        ca_dir,
        csr_file,
        pin_source=pin_source(pin_file),
        path_length=path_length,
        days=days,
        out=out,
        force=force,
        signature_scheme=signature_scheme,
    )
    for note in notes:
        click.echo(f"Note: {note}", err=True)
    serial = serial_hex(certificate.serial_number)
    click.echo(
        f"Wrote {path}: {rfc4514(certificate.subject)} (serial {serial}, "
        f"path length {path_length}, valid until {certificate.not_valid_after:%Y-%m-%d}, "
        f"thumbprint {x509build.sha1_thumbprint(certificate.dump())})"
    )


@cli.command()
@ca_dir_option
@click.option("--dns", multiple=True, help="DNS names, comma separated; the first is the subject.")
@click.option("--ip", multiple=True, help="IP addresses, comma separated.")
@click.option("--days", type=int, default=365, show_default=True)
@click.option(
    "--key-type", type=click.Choice(SERVER_KEY_CHOICES), default="rsa2048", show_default=True
)
@password_file_option
@legacy_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output PFX (default: <first DNS name>.pfx in the current directory).",
)
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@pin_file_option
def issue(ca_dir, dns, ip, days, key_type, password_file, legacy_pfx, out, force, pin_file):
    """Issue a recording-server certificate as a password-protected PFX."""
    from . import api, store, x509build
    from .db import serial_hex

    if not dns:
        if not sys.stdin.isatty():
            raise HsmcaError("no DNS names given: use --dns NAME (the first name is the subject)")
        dns = (click.prompt(DNS_PROMPT, default="", show_default=False, err=True),)
        # Like the guide's script: no names, no further questions.
        x509build.server_request(dns, (), days, _key_type(key_type))
        ip = (click.prompt(IP_PROMPT, default="", show_default=False, err=True),)
    request = x509build.server_request(dns, ip, days, _key_type(key_type))
    store.load_config(ca_dir)
    out = out or api.default_pfx_path(request)
    store.check_output(out, force)
    password = pfx_password(password_file)
    issued = api.issue_server(
        ca_dir,
        request,
        password=password,
        pin_source=pin_source(pin_file),
        out=out,
        legacy=legacy_pfx,
        force=force,
    )
    for note in issued.notes:
        click.echo(f"Note: {note}", err=True)
    names = ", ".join([*request.dns_names, *map(str, request.ip_addresses)])
    click.echo(
        f"Wrote {issued.path} (serial {serial_hex(issued.serial)}, {names}; "
        f"valid until {issued.not_after:%Y-%m-%d})"
    )


def _print_json(value) -> None:
    import json

    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _records_table(records) -> None:
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    rows = [
        (
            record.serial,
            record.subject,
            ", ".join([*record.dns, *record.ip]),
            f"{record.not_after:%Y-%m-%d}",
            str(record.days_left(now)),
            record.effective_status(now),
        )
        for record in records
    ]
    header = ("SERIAL", "SUBJECT", "NAMES", "NOT AFTER", "DAYS", "STATUS")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


@cli.command(name="list")
@ca_dir_option
@click.option("--expiring", type=click.IntRange(min=0), help="Only those expiring within DAYS.")
@click.option(
    "--status",
    type=click.Choice(["active", "superseded", "revoked", "expired", "all"]),
    default="active",
    show_default=True,
)
@json_option
def list_command(ca_dir, expiring, status, as_json) -> None:
    """What the CA has issued: serial, subject, names, expiry, status. Needs no token."""
    import datetime as dt

    from . import queries

    records = queries.list_certificates(ca_dir, status=status, expiring_within=expiring)
    if as_json:
        now = dt.datetime.now(dt.UTC)
        _print_json([record.to_dict(now) for record in records])
    else:
        _records_table(records)


@cli.command(name="check-expiry")
@ca_dir_option
@click.option(
    "--within", type=click.IntRange(min=0), default=30, show_default=True, help="Days ahead."
)
@json_option
def check_expiry(ca_dir, within, as_json) -> None:
    """Exit 1 if an active certificate expires within DAYS; for schedulers and monitoring."""
    import datetime as dt

    from . import queries

    now = dt.datetime.now(dt.UTC)
    records = queries.expiring_certificates(ca_dir, within)
    if as_json:
        _print_json([record.to_dict(now) for record in records])
    else:
        for record in records:
            left = record.days_left(now)
            days = abs(left)
            span = f"{days} day{'s' if days != 1 else ''}"
            when = f"expired {span} ago" if left < 0 else f"expires in {span}"
            click.echo(
                f"{record.subject} (serial {record.serial}, {', '.join(record.dns) or '-'}) "
                f"{when}, on {record.not_after:%Y-%m-%d}"
            )
        if not records:
            click.echo(f"No active certificate expires within {within} days.")
    if records:
        sys.exit(1)


@cli.command()
@ca_dir_option
@click.argument("serial_or_name")
@password_file_option
@legacy_option
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Output PFX.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@pin_file_option
def renew(ca_dir, serial_or_name, password_file, legacy_pfx, out, force, pin_file) -> None:
    """A new key and certificate with the same names; the old one becomes superseded."""
    from . import api
    from .db import serial_hex

    record, _, out, force = api.renewal_plan(ca_dir, serial_or_name, out, force)
    renewal = api.renew(
        ca_dir,
        record.serial,
        password=pfx_password(password_file),
        pin_source=pin_source(pin_file),
        out=out,
        legacy=legacy_pfx,
        force=force,
    )
    for note in renewal.issued.notes:
        click.echo(f"Note: {note}", err=True)
    click.echo(
        f"Wrote {renewal.issued.path} (serial {serial_hex(renewal.issued.serial)} replaces "
        f"{renewal.old_serial}; valid until {renewal.issued.not_after:%Y-%m-%d})"
    )


@cli.command()
@ca_dir_option
@click.argument("serial")
@click.option(
    "--reason",
    type=click.Choice(
        ["unspecified", "keyCompromise", "affiliationChanged", "superseded", "cessationOfOperation"]
    ),
    default="unspecified",
    show_default=True,
)
def revoke(ca_dir, serial, reason) -> None:
    """Mark a certificate revoked; publish it with 'hsmca crl'. Needs no token."""
    from . import api

    revoked = api.revoke(ca_dir, serial, reason)
    click.echo(
        f"Revoked {revoked.serial} ({revoked.subject}, reason {revoked.revocation_reason}); "
        "run 'hsmca crl' to publish it"
    )


@cli.command()
@ca_dir_option
@click.option("--days", type=int, default=30, show_default=True, help="Until nextUpdate.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output file (default: CA_DIR/ca.crl, or ca.crl.pem with --pem).",
)
@click.option("--pem", "pem_output", is_flag=True, help="Write PEM instead of DER.")
@pin_file_option
def crl(ca_dir, days, out, pem_output, pin_file) -> None:
    """Sign a CRL of every revoked certificate (DER; it replaces the previous CRL file)."""
    from . import api

    made = api.make_crl(
        ca_dir, pin_source=pin_source(pin_file), days=days, out=out, pem_output=pem_output
    )
    click.echo(
        f"Wrote {made.path} (CRL number {made.crl_number}, {made.entries} revoked, "
        f"next update {made.next_update:%Y-%m-%d %H:%M} UTC)"
    )


@cli.command()
@ca_dir_option
@click.argument("csrs", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where <first DNS name>.pem goes (default: the current directory).",
)
@click.option("--days", type=int, default=365, show_default=True)
@click.option("--dns", multiple=True, help="Replace the requested DNS names (comma separated).")
@click.option("--ip", multiple=True, help="Replace the requested IP addresses (comma separated).")
@click.option("--force", is_flag=True, help="Replace existing output files.")
@pin_file_option
def sign(ca_dir, csrs, out_dir, days, dns, ip, force, pin_file) -> None:
    """Sign CSRs of servers that keep their own keys; each gets leaf + chain as PEM."""
    from . import api
    from .db import serial_hex

    signed = api.sign_csrs(
        ca_dir,
        list(csrs),
        pin_source=pin_source(pin_file),
        days=days,
        dns=list(dns),
        ip=list(ip),
        out_dir=out_dir,
        force=force,
    )
    for result in signed:
        for note in result.ignored:
            click.echo(f"Note: {result.source}: not copied: {note}", err=True)
        for note in result.notes:
            click.echo(f"Note: {result.source}: {note}", err=True)
        click.echo(
            f"Wrote {result.path} from {result.source} (serial {serial_hex(result.serial)}; "
            f"valid until {result.not_after:%Y-%m-%d})"
        )


@cli.command()
@ca_dir_option
@click.argument("inventory", type=click.Path(dir_okay=False, exists=False, path_type=Path))
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=".",
    show_default="the current directory",
)
@password_file_option
@legacy_option
@click.option("--resume", is_flag=True, help="Skip servers whose PFX was already issued.")
@click.option("--strict", is_flag=True, help="Stop at the first bad row.")
@click.option("--days", type=int, default=365, show_default=True, help="Unless the row says.")
@pin_file_option
def batch(ca_dir, inventory, out_dir, password_file, legacy_pfx, resume, strict, days, pin_file):
    """Issue a PFX for every recording server in a CSV inventory, with one login."""
    from . import api
    from .db import serial_hex
    from .inventory import parse_inventory

    try:
        text = inventory.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise HsmcaError(f"cannot read the inventory {inventory}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise HsmcaError(
            f"the inventory {inventory} is not UTF-8 text; save it as CSV UTF-8"
        ) from None
    parsed = parse_inventory(text, default_days=days)
    todo, decided = api.plan_batch(ca_dir, parsed, out_dir=out_dir, resume=resume)
    refused = [row for row in decided if row.status == "failed"]
    if strict and refused:
        raise HsmcaError(f"{inventory} line {refused[0].line}: {refused[0].message} (--strict)")
    for row in decided:
        click.echo(f"line {row.line}: {row.status}: {row.message}", err=row.status == "failed")
    password = pfx_password(password_file) if todo else ""
    on_terminal = sys.stdout.isatty()

    def show(result) -> None:
        for note in result.notes:
            click.echo(f"Note: line {result.line}: {note}", err=True)
        if result.status == "issued":
            text = (
                f"line {result.line}: issued {result.message} (serial {serial_hex(result.serial)})"
            )
        else:
            text = f"line {result.line}: {result.status}: {result.message}"
        if on_terminal:
            bar.update(1)
            if result.status == "failed":
                click.echo(f"\n{text}", err=True)
        else:
            click.echo(text, err=result.status == "failed")

    bar = click.progressbar(length=len(todo), label="Issuing", file=sys.stderr)
    with bar if on_terminal else contextlib.nullcontext():
        results = api.batch_issue(
            ca_dir,
            todo,
            password=password,
            pin_source=pin_source(pin_file),
            legacy=legacy_pfx,
            strict=strict,
            progress=show,
        )
    everything = decided + results
    counts = {
        status: sum(r.status == status for r in everything)
        for status in ("issued", "skipped", "failed")
    }
    not_run = len(todo) - len(results)
    summary = (
        f"{counts['issued']} issued, {counts['skipped']} skipped, "
        f"{counts['failed']} failed" + (f", {not_run} not attempted" if not_run else "")
    )
    click.echo(f"Summary: {summary}")
    if counts["failed"] or not_run:
        sys.exit(1)


@cli.group(name="audit")
def audit_group() -> None:
    """The CA's hash-chained audit log."""


@audit_group.command(name="verify")
@ca_dir_option
def audit_verify(ca_dir) -> None:
    """Check every entry and the chain; exit 1 at the first bad line."""
    from . import queries

    result = queries.verify_audit_log(ca_dir)
    if not result.ok:
        raise HsmcaError(result.message)
    click.echo(result.message)


@cli.group(name="token")
def token_group() -> None:
    """Look at the tokens a PKCS#11 module offers."""


@token_group.command(name="list")
@module_option
@json_option
def token_list(module, as_json) -> None:
    """Slots and tokens, with their flags; no login needed."""
    from . import token

    slots = token.describe_slots(module or "")
    if as_json:
        _print_json(slots)
        return
    for slot in slots:
        device = slot["token"]
        if device is None:
            click.echo(f"slot {slot['slot_id']}: no token ({slot['description']})")
            continue
        if not device["initialized"]:
            click.echo(f"slot {slot['slot_id']}: uninitialised token ({device['model']})")
            continue
        click.echo(
            f"slot {slot['slot_id']}: token {device['label']!r} serial {device['serial']} "
            f"{device['manufacturer']} {device['model']}"
            + (" [PIN pad]" if device["pin_pad"] else "")
        )
        click.echo(f"    flags: {', '.join(device['flags'])}")


@token_group.command(name="info")
@module_option
@click.option("--token", "token_spec", required=True, help="Token label or PKCS#11 URI.")
@pin_file_option
@json_option
def token_info(module, token_spec, pin_file, as_json) -> None:
    """Mechanisms with key sizes; after login, the keys and certificates on the token."""
    from . import token
    from .p11uri import parse_token_spec

    selector = parse_token_spec(token_spec)
    device = token.find_token(_module(module, selector), selector)
    mechanisms = token.describe_mechanisms(device)
    with token.open_session(device, pin_source(pin_file or selector.pin_file())) as session:
        objects = token.describe_objects(session)
    if as_json:
        _print_json(
            {"token": str(token.token_info(device)), "mechanisms": mechanisms, "objects": objects}
        )
        return
    click.echo(f"{token.token_info(device)}")
    click.echo("mechanisms:")
    for mechanism in mechanisms:
        sizes = ""
        if mechanism["max_key_size"]:
            sizes = f" {mechanism['min_key_size']}-{mechanism['max_key_size']} bits"
        click.echo(f"  {mechanism['mechanism']}{sizes} ({', '.join(mechanism['flags'])})")
    click.echo("objects:")
    for obj in objects:
        details = [f"id {obj['id']}"]
        if "key_type" in obj:
            details.append(f"{obj['key_type']} {obj['size'] or '?'}")
        for attribute in token.SAFETY_ATTRIBUTE_NAMES:
            if attribute in obj:
                details.append(f"{attribute}={obj[attribute]}")
        click.echo(f"  {obj['class']} {obj['label']!r}: {', '.join(details)}")


@cli.group(name="ceremony")
def ceremony_group() -> None:
    """Scripted key ceremonies (root, subordinate-key, sign-ca, crl), each with a transcript."""


@ceremony_group.command(name="run")
@click.argument("ceremony_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--rehearse",
    "rehearse_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Practise on SoftHSM tokens kept in DIR (never a real token); every file goes under DIR.",
)
@click.option(
    "--transcript",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where the transcript goes (default: the file's 'transcript', else next to the outputs).",
)
@pin_file_option
def ceremony_run(ceremony_file, rehearse_dir, transcript, pin_file) -> None:
    """Check everything, then run the ceremony in CEREMONY_FILE step by step, with a transcript."""
    from . import ceremony

    def new_pin(label: str) -> str:
        return _secret(
            pin_file,
            PIN_ENV,
            "token PIN",
            "--pin-file",
            f"New user PIN for the rehearsal token {label!r}",
            confirm=True,
        )

    outcome = ceremony.run(
        ceremony_file,
        rehearse=rehearse_dir,
        transcript=transcript,
        pin_source=pin_source(pin_file),
        new_pin=new_pin,
        say=click.echo,
    )
    for line in outcome.lines:
        click.echo(line)


@ceremony_group.command(name="verify")
@click.argument("transcript", type=click.Path(dir_okay=False, path_type=Path))
def ceremony_verify(transcript) -> None:
    """Check a transcript's entries and chain, and re-hash the outputs it lists; exit 1 if bad."""
    from . import ceremony

    report = ceremony.verify_transcript(transcript)
    kind = "rehearsal" if report.rehearsal else "ceremony"
    click.echo(
        f"{report.path}: {report.entries} entries, chain intact; {report.ceremony} {kind} "
        f"completed {report.finished} by {report.who} on {report.host}"
    )
    click.echo(f"  last entry SHA-256 {report.last_line_sha256} (compare with the signed summary)")
    if report.summary_checked:
        click.echo("  the summary beside it records the same last entry")
    click.echo(f"  {len(report.unchanged)} output(s) unchanged")
    for path in report.unchanged:
        click.echo(f"    {path}")
    for path in report.missing:
        click.echo(f"  not found, not checked: {path}")


def main() -> None:
    cli(prog_name="hsmca")
