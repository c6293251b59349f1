"""Errors that dltune reports to the user as one clear paragraph (the CLI exits 2 on them)."""

from __future__ import annotations

import re

__all__ = ["ConfigError", "DataError", "DltuneError", "mask_password"]


class DltuneError(Exception):
    """Bad input that the user can fix; its message names the field or file at fault."""


class ConfigError(DltuneError):
    """An experiment file, override or setting that is invalid."""


class DataError(DltuneError):
    """A data file or dataset that cannot be read or used."""


def mask_password(text: str) -> str:
    """A URL (or a message holding one) with any password replaced by ***."""
    return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", text)
