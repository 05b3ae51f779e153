"""Typed errors: lower layers raise these; the edges map them to errno, RPC status or exit codes."""

import errno as _errno
import os


class FsError(Exception):
    """A file-system operation failed with a POSIX errno (s3ql's FUSEError, one level lower)."""

    def __init__(self, errno: int, message: str = ""):
        super().__init__(errno, message or os.strerror(errno))
        self.errno = errno
        self.message = message or os.strerror(errno)

    def __str__(self) -> str:
        return f"[{_errno.errorcode.get(self.errno, self.errno)}] {self.message}"


class ConfigError(Exception):
    """Bad or missing configuration; the message names the key and the problem."""


class QuietError(Exception):
    """A user-facing failure: print the one-line message, no traceback, exit with exitcode."""

    def __init__(self, message: str, exitcode: int = 1):
        super().__init__(message)
        self.exitcode = exitcode
