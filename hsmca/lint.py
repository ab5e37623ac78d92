"""RFC 5280 linting with pkilint, in-process; imported only when something is about to be signed."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from .errors import LintFailure

# pkilint reports single-label host names (Milestone's workgroup names such as "rec1") as invalid
# domain syntax. hsmca issues them on purpose, so exactly this finding, for exactly those names,
# is tolerated; anything else stops the signature.
_INVALID_DOMAIN = "pkix.invalid_domain_name_syntax"


@dataclass(frozen=True)
class Finding:
    severity: str
    code: str
    node: str
    message: str | None

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.code, self.message)

    def __str__(self) -> str:
        detail = f" ({self.message})" if self.message else ""
        return f"{self.severity} {self.code} at {self.node}{detail}"


@functools.cache
def _certificate_validator():
    from pkilint.pkix import certificate, extension, name

    return certificate.create_pkix_certificate_validator_container(
        certificate.create_decoding_validators(
            name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS
        ),
        [
            certificate.create_issuer_validator_container([]),
            certificate.create_validity_validator_container(),
            certificate.create_subject_validator_container([]),
            certificate.create_extensions_validator_container([]),
            certificate.create_spki_validator_container([]),
        ],
    )


@functools.cache
def _crl_validator():
    from pkilint import pkix
    from pkilint.pkix import crl, extension, name
    from pkilint.pkix.crl import crl_extension

    return crl.create_pkix_crl_validator_container(
        [
            pkix.create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
            pkix.create_extension_decoder(extension.EXTENSION_MAPPINGS),
        ],
        [
            crl.create_issuer_validator_container([]),
            crl.create_validity_validator_container([]),
            crl.create_extensions_validator_container([]),
            # RFC 5280 5.3.1: reasonCode SHOULD be absent rather than "unspecified".
            crl_extension.CrlReasonCodeValidator(),
        ],
    )


def prepare() -> None:
    """Import pkilint and build both validators now rather than on the first lint."""
    from pkilint import loader  # noqa: F401

    _certificate_validator()
    _crl_validator()


def _findings(validator, document) -> list[Finding]:
    from pkilint.validation import ValidationFindingSeverity

    found = []
    for result in validator.validate(document.root):
        for description in result.finding_descriptions:
            severity = description.finding.severity
            if severity <= ValidationFindingSeverity.WARNING:
                found.append(
                    Finding(
                        severity.name,
                        description.finding.code,
                        result.node.path,
                        description.message,
                    )
                )
    return found


def certificate_findings(der: bytes) -> list[Finding]:
    """Every pkilint RFC 5280 finding at WARNING or worse for a DER certificate."""
    from pkilint import loader

    document = loader.RFC5280CertificateDocumentLoader().load_der_document(der, "certificate")
    return _findings(_certificate_validator(), document)


Allowance = tuple[str, str | None]


def single_label_allowances(dns_names) -> frozenset[Allowance]:
    """The findings a deliberate single-label host name (e.g. "rec1") causes, and only those."""
    return frozenset(
        (_INVALID_DOMAIN, f'Invalid domain name syntax: "{name}"')
        for name in dns_names
        if "." not in name
    )


def check_certificate(der: bytes, allowed: frozenset[Allowance] = frozenset()) -> list[Finding]:
    """Raise LintFailure for any finding at WARNING or worse not in `allowed`.

    Returns the allowed findings that did occur, so the caller can tell the user about them.
    """
    findings = certificate_findings(der)
    refused = [f for f in findings if f.key not in allowed]
    if refused:
        raise LintFailure(
            "pkilint refused the certificate before signing, nothing was signed: "
            + "; ".join(str(f) for f in refused)
        )
    return findings


def crl_findings(der: bytes) -> list[Finding]:
    """Every pkilint RFC 5280 CRL finding at WARNING or worse for a DER CRL."""
    from pkilint import loader

    document = loader.RFC5280CertificateListDocumentLoader().load_der_document(der, "crl")
    return _findings(_crl_validator(), document)


def check_crl(der: bytes) -> None:
    """Raise LintFailure for any CRL finding at WARNING or worse."""
    findings = crl_findings(der)
    if findings:
        raise LintFailure(
            "pkilint refused the CRL before signing, nothing was signed: "
            + "; ".join(str(f) for f in findings)
        )
