"""The few exceptions hsmca raises; each message is written for the person at the keyboard."""


class HsmcaError(Exception):
    """A problem the user can fix: the message says what was wrong and what to do."""


class InvalidRequest(HsmcaError):
    """A name, address, validity or other input failed validation before anything was touched."""


class TokenError(HsmcaError):
    """The PKCS#11 module or token refused or failed; the message names the token."""


class OutputExists(HsmcaError):
    """An output file is already there and the user did not ask to overwrite it."""


class LintFailure(HsmcaError):
    """pkilint found a problem at WARNING or above in what hsmca was about to sign."""


class IntegrityError(HsmcaError):
    """Something hsmca produced or read does not match what it must be (signature, key, file)."""
