"""Pure unit tests: no token, no files; certificates are signed by in-memory software keys."""
