"""Errors that dltune reports to the user as one clear paragraph (the CLI exits 2 on them)."""

from __future__ import annotations

import re

__all__ = ["ConfigError", "DataError", "DltuneError", "MissingExtra", "UserCodeError", "WriteError",
           "mask_password"]


class DltuneError(Exception):
    """Bad input that the user can fix; its message names the field or file at fault."""


class ConfigError(DltuneError):
    """An experiment file, override or setting that is invalid."""


class DataError(DltuneError):
    """A data file or dataset that cannot be read or used."""


class WriteError(DltuneError):
    """A file that cannot be written: the disk is full, a quota or a file-size limit is reached, the folder is
    read-only. The message names the file; a search stops on it instead of failing trial after trial."""


class MissingExtra(ConfigError):
    """A command needs an optional package (one of dltune's extras: compress, postgres, tracking, ray) that is not
    installed; the message ends with the pip line that installs it."""


class UserCodeError(ConfigError):
    """The user's own code, named by an import path, failed: it raised, or returned the wrong kind of thing. The
    message names the key and the import path; the original exception is its __cause__ (the CLI's --debug shows
    its traceback)."""


# user:password@ in a URL; the password ends at the last "@" before the host (one the user did not percent-encode
# is still hidden whole), and the host ends the URL's authority at "/", "?", a quote or a space
_USER_PASSWORD = re.compile(r"(://[^:/@\s]*:)\S+?@(?=[^@\s/?'\"]*(?:[/?\s'\"]|$))")
_QUERY_PASSWORD = re.compile(r"([?&](?:password|passwd)=)[^&\s'\"]+", re.IGNORECASE)  # libpq's ?password=


def mask_password(text: str) -> str:
    """A URL (or a message holding one) with any password replaced by ***: the user:password@ part's, and a
    password=... query parameter's."""
    return _QUERY_PASSWORD.sub(r"\1***", _USER_PASSWORD.sub(r"\1***@", text))
