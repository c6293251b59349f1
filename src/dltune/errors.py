"""Errors that dltune reports to the user as one clear paragraph (the CLI exits 2 on them)."""

from __future__ import annotations

__all__ = ["DltuneError", "ConfigError", "DataError"]


class DltuneError(Exception):
    """Bad input that the user can fix; its message names the field or file at fault."""


class ConfigError(DltuneError):
    """An experiment file, override or setting that is invalid."""


class DataError(DltuneError):
    """A data file or dataset that cannot be read or used."""
