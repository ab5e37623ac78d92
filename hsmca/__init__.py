"""hsmca: a certificate authority whose private key never leaves a PKCS#11 token."""

__version__ = "0.1.0"
