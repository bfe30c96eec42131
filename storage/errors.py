"""Typed storage errors: each names the table and what to do about it."""

from __future__ import annotations


class StorageError(Exception):
    """Base of every storage failure."""


class NotADeltaTableError(StorageError):
    """A table path that holds something other than a Delta table (or nothing, when reading)."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"{path} is not a Delta table: {detail}")
        self.path = path

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (type(self), (self.path, str(self).split(": ", 1)[1]))


class BarsSchemaError(StorageError):
    """A frame that does not match the table's schema; nothing was written."""


class CorruptTableError(StorageError):
    """A table whose log names data files that are missing or unreadable."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"{path} is damaged: {detail}. Restore the file from a backup, or read an earlier "
                         f"version (time travel) that does not reference it")
        self.path = path


class UnsupportedLocationError(StorageError, ValueError):
    """A data directory URI whose scheme names no store delta-rs and polars can both reach."""

    def __init__(self, uri: str, schemes: list[str]) -> None:
        super().__init__(f"{uri}: unsupported data directory; IBKR_DATA_DIR takes a local path or a URI with one of "
                         f"the schemes {', '.join(f'{s}://' for s in schemes)}")
        self.uri = uri
        self.schemes = schemes

    def __reduce__(self) -> tuple[type, tuple[str, list[str]]]:
        return (type(self), (self.uri, self.schemes))
