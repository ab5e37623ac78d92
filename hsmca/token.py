"""The only module that speaks PKCS#11: libraries, tokens, sessions, key generation and signing.

It knows nothing of X.509: it generates keys, returns public keys as SubjectPublicKeyInfo DER,
signs bytes and stores opaque certificate bytes. Every PKCS#11 error leaves this module as a
TokenError whose message names the token and says what to do.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pkcs11
from asn1crypto import algos, core, keys
from pkcs11 import MGF, Attribute, Mechanism, ObjectClass
from pkcs11 import KeyType as P11KeyType
from pkcs11 import exceptions as p11
from pkcs11.util.ec import (
    encode_ec_public_key,
    encode_ecdsa_signature,
    encode_named_curve_parameters,
)
from pkcs11.util.rsa import encode_rsa_public_key

from .errors import TokenError
from .models import KeyType
from .p11uri import TokenSelector

# python-pkcs11 must never sign from two threads of one process at once (SoftHSM's heap breaks).
_SIGN_LOCK = threading.Lock()

# The attributes that prove a CA key can never leave the token, read back after generation.
KEY_SAFETY_ATTRIBUTES = (
    Attribute.SENSITIVE,
    Attribute.EXTRACTABLE,
    Attribute.ALWAYS_SENSITIVE,
    Attribute.NEVER_EXTRACTABLE,
    Attribute.LOCAL,
    Attribute.ALWAYS_AUTHENTICATE,
)
SAFETY_ATTRIBUTE_NAMES = tuple(attribute.name.lower() for attribute in KEY_SAFETY_ATTRIBUTES)

PinSource = Callable[["TokenInfo"], str | None]
"""Called with the token about to be logged in to; returns that token's user PIN.

For a token with a PIN pad (protected authentication path) it returns None after telling the
user to type the PIN on the reader.
"""


@dataclass(frozen=True)
class TokenInfo:
    label: str
    serial: str
    manufacturer: str
    model: str
    protected_auth_path: bool = False
    pin_count_low: bool = False
    """The token says a wrong user PIN was entered since the last good one."""
    pin_final_try: bool = False
    """One more wrong user PIN locks the token."""

    def __str__(self) -> str:
        return f"token {self.label!r} (serial {self.serial})"


@dataclass(frozen=True)
class GeneratedKey:
    key_id: bytes
    public_key_der: bytes
    """SubjectPublicKeyInfo DER."""
    attributes: dict[str, bool]
    """The safety attributes read back from the token (CKA_ name without prefix, lower case)."""


def load_library(module: str):
    """Load a PKCS#11 library once per process; a clear error when it is missing or broken."""
    if not module:
        raise TokenError(
            "no PKCS#11 module given: pass --module /path/to/library.so or set HSMCA_MODULE "
            "(SoftHSM on Debian: /usr/lib/softhsm/libsofthsm2.so)"
        )
    if not os.path.isfile(module):
        raise TokenError(
            f"PKCS#11 module {module!r} not found: check the path given with --module or "
            "HSMCA_MODULE (SoftHSM on Debian: apt-get install softhsm2, "
            "then /usr/lib/softhsm/libsofthsm2.so)"
        )
    try:
        return pkcs11.lib(module)
    except (p11.PKCS11Error, RuntimeError, OSError) as exc:
        raise TokenError(
            f"cannot load PKCS#11 module {module!r} ({type(exc).__name__}{_detail(exc)}): "
            "is it a PKCS#11 library for this machine's architecture?"
        ) from None


def _detail(exc: Exception) -> str:
    text = str(exc)
    return f": {text}" if text else ""


def _token_info(token) -> TokenInfo:
    serial = token.serial
    if isinstance(serial, bytes):
        serial = serial.decode("ascii", "replace")
    flags = token.flags
    return TokenInfo(
        token.label,
        serial.strip(),
        token.manufacturer_id,
        token.model,
        protected_auth_path=bool(flags & pkcs11.TokenFlag.PROTECTED_AUTHENTICATION_PATH),
        pin_count_low=bool(flags & pkcs11.TokenFlag.USER_PIN_COUNT_LOW),
        pin_final_try=bool(flags & pkcs11.TokenFlag.USER_PIN_FINAL_TRY),
    )


def find_token(module: str, selector: TokenSelector | str):
    """The one initialised token that matches `selector` (a label, or the fields of a URI)."""
    if isinstance(selector, str):
        selector = TokenSelector(label=selector)
    library = load_library(module)
    with translate_errors("the PKCS#11 module"):
        tokens = [t for t in library.get_tokens() if t.label]
    wanted = {
        "label": selector.label,
        "serial": selector.serial,
        "manufacturer": selector.manufacturer,
        "model": selector.model,
    }
    wanted = {field: value for field, value in wanted.items() if value is not None}
    infos = [_token_info(t) for t in tokens]
    matches = [
        (t, info)
        for t, info in zip(tokens, infos, strict=True)
        if all(getattr(info, field) == value for field, value in wanted.items())
    ]
    description = ", ".join(f"{field} {value!r}" for field, value in wanted.items()) or "any"
    if not matches:
        known = ", ".join(str(info) for info in infos) or "none"
        raise TokenError(
            f"no token with {description} in {module}; tokens present: {known}. "
            "Check the token label and that the token is plugged in"
        )
    if len(matches) > 1:
        listed = ", ".join(str(info) for _, info in matches)
        raise TokenError(
            f"{len(matches)} tokens match {description}: {listed}. "
            "Tell them apart by serial number (a PKCS#11 URI: pkcs11:token=...;serial=...)"
        )
    return matches[0][0]


def token_info(token) -> TokenInfo:
    return _token_info(token)


@contextlib.contextmanager
def open_session(token, pin_source: PinSource, rw: bool = False) -> Iterator:
    """One logged-in session on `token`, closed (and logged out) on the way out."""
    info = _token_info(token)
    if token.flags & pkcs11.TokenFlag.USER_PIN_LOCKED:
        raise TokenError(
            f"the user PIN of {info} is locked; the security officer must unlock it "
            "with the token vendor's tool before it can be used"
        )
    pin = pin_source(info)
    if info.protected_auth_path:
        pin = pkcs11.PROTECTED_AUTH
    with translate_errors(str(info)):
        session = token.open(rw=rw, user_pin=pin)
    try:
        yield session
    finally:
        with contextlib.suppress(p11.PKCS11Error):
            session.close()


_MESSAGES: list[tuple[type[Exception], str]] = [
    (
        p11.PinIncorrect,
        "wrong PIN for {what}; check the PIN file or HSMCA_PIN. Each wrong try "
        "brings the token closer to locking the PIN",
    ),
    (p11.PinLocked, "the user PIN of {what} is locked; the security officer must unlock it"),
    (p11.PinExpired, "the user PIN of {what} has expired; set a new one with the token's tool"),
    (p11.PinLenRange, "the PIN for {what} has the wrong length for this token"),
    (p11.PinInvalid, "the PIN for {what} has characters the token does not accept"),
    (p11.UserPinNotInitialized, "{what} has no user PIN yet; initialise it with the token's tool"),
    (p11.TokenNotPresent, "{what} is not present; plug it in and try again"),
    (p11.TokenNotRecognised, "{what} is not recognised by the PKCS#11 module"),
    (p11.DeviceRemoved, "{what} was removed; plug it in again and repeat the command"),
    (p11.DeviceMemory, "{what} has no room left for new objects"),
    (p11.TokenWriteProtected, "{what} is write-protected"),
    (p11.SessionCount, "{what} has too many open sessions; close other programs using it"),
    (p11.NoSuchKey, "the CA key was not found on {what}; check that this is the CA's token"),
    (p11.MechanismInvalid, "{what} does not offer the signing mechanism this key needs"),
    (p11.KeySizeRange, "{what} does not support this key size; choose another --key-type"),
    (p11.DomainParamsInvalid, "{what} does not support this curve; choose another --key-type"),
    (p11.FunctionNotSupported, "{what} does not support an operation hsmca needs"),
]


@contextlib.contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn PKCS#11 exceptions (whose str() is often empty) into sentences about `what`."""
    try:
        yield
    except p11.PKCS11Error as exc:
        for kind, message in _MESSAGES:
            if isinstance(exc, kind):
                raise TokenError(message.format(what=what)) from None
        raise TokenError(
            f"{what} reported {type(exc).__name__}{_detail(exc)}; check the token and try again"
        ) from None


def generate_ca_key(
    session, key_type: KeyType, label: str, always_authenticate: bool = False
) -> GeneratedKey:
    """Generate a non-extractable, sensitive signing key pair on the token and prove it is so.

    Refuses when a private key with `label` exists: a CA key is never shadowed or replaced.
    `always_authenticate` makes the token ask for the PIN before every signature.
    """
    what = f"{_token_info(session.token)}"
    with translate_errors(what):
        if list(
            session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: label})
        ):
            raise TokenError(
                f"{what} already holds a private key labelled {label!r}; hsmca never replaces "
                "a CA key. Choose another --key-label"
            )
        key_id = secrets.token_bytes(16)
        private_template = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
            Attribute.DECRYPT: False,
            Attribute.UNWRAP: False,
            Attribute.DERIVE: False,
        }
        if always_authenticate:
            private_template[Attribute.ALWAYS_AUTHENTICATE] = True
        public_template = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: False,
            Attribute.VERIFY: True,
            Attribute.ENCRYPT: False,
            Attribute.WRAP: False,
        }
        options = {
            "id": key_id,
            "label": label,
            "store": True,
            "capabilities": pkcs11.MechanismFlag.SIGN | pkcs11.MechanismFlag.VERIFY,
            "public_template": public_template,
            "private_template": private_template,
        }
        algorithm = key_type.algorithm
        if key_type.is_rsa:
            public, private = session.generate_keypair(P11KeyType.RSA, algorithm.bits, **options)
        else:
            parameters = session.create_domain_parameters(
                P11KeyType.EC,
                {Attribute.EC_PARAMS: encode_named_curve_parameters(algorithm.curve)},
                local=True,
            )
            public, private = parameters.generate_keypair(**options)
        try:
            attributes = read_safety_attributes(private)
            if not attributes["sensitive"] or attributes["extractable"]:
                raise TokenError(
                    f"{what} created the key as sensitive={attributes['sensitive']}, "
                    f"extractable={attributes['extractable']}; it was deleted. This token cannot "
                    "keep a CA key safe"
                )
            public_key_der = _public_key_info(public, key_type)
        except BaseException:
            for obj in (private, public):
                with contextlib.suppress(p11.PKCS11Error):
                    obj.destroy()
            raise
    return GeneratedKey(key_id, public_key_der, attributes)


def read_safety_attributes(private_key) -> dict[str, bool]:
    values = private_key.get_attributes(list(KEY_SAFETY_ATTRIBUTES))
    return {
        name: bool(values.get(attr))
        for name, attr in zip(SAFETY_ATTRIBUTE_NAMES, KEY_SAFETY_ATTRIBUTES, strict=True)
    }


def destroy_key(session, key_id: bytes) -> None:
    """Remove the key pair with `key_id` (used to undo an init that failed before it finished)."""
    with translate_errors(str(_token_info(session.token))):
        for obj in session.get_objects({Attribute.ID: key_id}):
            obj.destroy()


def _public_key_info(public_key, key_type: KeyType) -> bytes:
    if key_type.is_rsa:
        return keys.PublicKeyInfo(
            {
                "algorithm": {"algorithm": "rsa", "parameters": core.Null()},
                "public_key": keys.RSAPublicKey.load(encode_rsa_public_key(public_key)),
            }
        ).dump()
    return encode_ec_public_key(public_key)


def find_private_key(session, key_id: bytes, label: str):
    """The private key with CKA_ID `key_id`; the label is only used in messages."""
    what = str(_token_info(session.token))
    with translate_errors(what):
        found = list(
            session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: key_id})
        )
    if not found:
        raise TokenError(
            f"{what} holds no private key with id {key_id.hex()} (label {label!r}); "
            "is this the CA's token?"
        )
    if len(found) > 1:
        raise TokenError(f"{what} holds {len(found)} private keys with id {key_id.hex()}")
    return found[0]


def store_certificate(
    session, der: bytes, label: str, key_id: bytes, subject: bytes, issuer: bytes, serial: bytes
) -> None:
    """Store certificate bytes on the token beside the key with the same CKA_ID (once)."""
    with translate_errors(str(_token_info(session.token))):
        stored = session.get_objects(
            {Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.ID: key_id}
        )
        if any(obj[Attribute.VALUE] == der for obj in stored):
            return  # an interrupted completion stored it already
        session.create_object(
            {
                Attribute.CLASS: ObjectClass.CERTIFICATE,
                Attribute.CERTIFICATE_TYPE: pkcs11.CertificateType.X_509,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: False,
                Attribute.LABEL: label,
                Attribute.ID: key_id,
                Attribute.SUBJECT: subject,
                Attribute.ISSUER: issuer,
                Attribute.SERIAL_NUMBER: serial,
                Attribute.VALUE: der,
            }
        )


class TokenSigner:
    """Signs with a private key on the token, choosing the mechanism the token offers.

    Tokens that offer the hashed mechanism (CKM_SHA256_RSA_PKCS) get the data; others get a
    host-made digest (a DigestInfo for raw CKM_RSA_PKCS, the bare hash for CKM_ECDSA).
    ECDSA's raw r||s is returned DER-encoded, as X.509 wants it.
    """

    def __init__(
        self,
        session,
        private_key,
        key_type: KeyType,
        pin_source: PinSource,
        pss: bool = False,
    ):
        self._session = session
        self._key = private_key
        self._key_type = key_type
        self._info = _token_info(session.token)
        self._what = str(self._info)
        self._pin_source = pin_source
        self.pss = pss
        """RSA-PSS (RFC 4055, salt as long as the hash) instead of PKCS#1 v1.5."""
        algorithm = key_type.algorithm
        with translate_errors(self._what):
            offered = session.token.slot.get_mechanisms()
            # Such a key wants the PIN again (a context-specific login) before every signature.
            self.always_authenticate = bool(
                private_key.get_attributes([Attribute.ALWAYS_AUTHENTICATE]).get(
                    Attribute.ALWAYS_AUTHENTICATE
                )
            )
        if self.always_authenticate and self._info.protected_auth_path:
            raise TokenError(
                f"the CA key on {self._what} needs the PIN before every signature and the token "
                "has a PIN pad; python-pkcs11 cannot log in that way. Use a key without "
                "CKA_ALWAYS_AUTHENTICATE or a reader without PIN pad"
            )
        if pss and not algorithm.pss_hashed_mechanism:
            raise TokenError(f"RSA-PSS needs an RSA key; this CA key is {key_type.value}")
        self._hashed_name = algorithm.pss_hashed_mechanism if pss else algorithm.hashed_mechanism
        hashed = Mechanism[self._hashed_name]
        raw = Mechanism[algorithm.pss_raw_mechanism if pss else algorithm.raw_mechanism]
        self._parameters = None
        if pss:
            hash_mechanism = Mechanism[algorithm.hash_name.upper()]
            salt_length = hashlib.new(algorithm.hash_name).digest_size
            self._parameters = (hash_mechanism, MGF[algorithm.hash_name.upper()], salt_length)
        if hashed in offered:
            self.mechanism = hashed
        elif raw in offered:
            self.mechanism = raw
        else:
            raise TokenError(
                f"{self._what} offers neither {hashed.name} nor {raw.name}; "
                f"it cannot sign with a {key_type.value} key"
            )

    @property
    def key_type(self) -> KeyType:
        return self._key_type

    def with_pss(self) -> TokenSigner:
        """The same key on the same session, signing with RSA-PSS."""
        return TokenSigner(self._session, self._key, self._key_type, self._pin_source, pss=True)

    def _message(self, data: bytes) -> bytes:
        if self.mechanism.name == self._hashed_name:
            return data
        hash_name = self._key_type.algorithm.hash_name
        digest = hashlib.new(hash_name, data).digest()
        if self._key_type.is_rsa and not self.pss:
            return algos.DigestInfo(
                {
                    "digest_algorithm": {"algorithm": hash_name, "parameters": core.Null()},
                    "digest": digest,
                }
            ).dump()
        return digest

    def sign(self, data: bytes) -> bytes:
        message = self._message(data)
        pin = self._pin_source(self._info) if self.always_authenticate else None
        with _SIGN_LOCK, translate_errors(self._what):
            signature = self._key.sign(
                message, mechanism=self.mechanism, mechanism_param=self._parameters, pin=pin
            )
        if self._key_type.is_rsa:
            return signature
        return encode_ecdsa_signature(signature)


# --- looking at tokens (hsmca token list / info) ----------------------------------------------


def _flag_names(flags) -> list[str]:
    return sorted(flag.name.lower() for flag in type(flags) if flag and flags & flag)


def describe_slots(module: str) -> list[dict]:
    """Every slot of the module and its token, if any, with flags; no login needed."""
    library = load_library(module)
    described = []
    with translate_errors("the PKCS#11 module"):
        for slot in library.get_slots():
            entry: dict = {
                "slot_id": slot.slot_id,
                "description": slot.slot_description.strip(),
                "manufacturer": slot.manufacturer_id.strip(),
                "slot_flags": _flag_names(slot.flags),
                "token": None,
            }
            if slot.flags & pkcs11.SlotFlag.TOKEN_PRESENT:
                try:
                    device = slot.get_token()
                except (p11.TokenNotPresent, p11.TokenNotRecognised):
                    device = None
                if device is not None:
                    info = _token_info(device)
                    entry["token"] = {
                        "label": info.label,
                        "serial": info.serial,
                        "manufacturer": info.manufacturer.strip(),
                        "model": info.model.strip(),
                        "initialized": bool(device.flags & pkcs11.TokenFlag.TOKEN_INITIALIZED),
                        "pin_pad": info.protected_auth_path,
                        "flags": _flag_names(device.flags),
                    }
            described.append(entry)
    return described


def describe_mechanisms(device) -> list[dict]:
    """The token's mechanisms with key sizes and capabilities."""
    slot = device.slot
    described = []
    with translate_errors(str(_token_info(device))):
        for mechanism in sorted(slot.get_mechanisms(), key=int):
            info = slot.get_mechanism_info(mechanism)
            name = mechanism.name if isinstance(mechanism, Mechanism) else f"0x{int(mechanism):08x}"
            described.append(
                {
                    "mechanism": f"CKM_{name}",
                    "min_key_size": info.min_key_length,
                    "max_key_size": info.max_key_length,
                    "flags": _flag_names(info.flags),
                }
            )
    return described


_OBJECT_CLASSES = {
    ObjectClass.PRIVATE_KEY: "private key",
    ObjectClass.PUBLIC_KEY: "public key",
    ObjectClass.CERTIFICATE: "certificate",
}


def describe_objects(session) -> list[dict]:
    """Keys and certificates visible in a logged-in session, with the safety attributes."""
    described = []
    with translate_errors(str(_token_info(session.token))):
        for object_class, kind in _OBJECT_CLASSES.items():
            for obj in session.get_objects({Attribute.CLASS: object_class}):
                basics = obj.get_attributes([Attribute.LABEL, Attribute.ID])
                entry: dict = {
                    "class": kind,
                    "label": basics.get(Attribute.LABEL, ""),
                    "id": (basics.get(Attribute.ID) or b"").hex(),
                }
                if object_class != ObjectClass.CERTIFICATE:
                    entry["key_type"] = obj.key_type.name.lower()
                    entry["size"] = _key_size(obj)
                if object_class == ObjectClass.PRIVATE_KEY:
                    entry.update(read_safety_attributes(obj))
                described.append(entry)
    return described


def _key_size(key) -> int | None:
    try:
        if key.key_type == P11KeyType.RSA:
            return key.key_length
        params = key[Attribute.EC_PARAMS]
        curve = keys.ECDomainParameters.load(params).chosen.native
        return {"secp256r1": 256, "secp384r1": 384, "secp521r1": 521}.get(curve)
    except (p11.PKCS11Error, ValueError, KeyError):
        return None
