"""Paths as pycontain takes them: str, bytes or os.PathLike, encoded once."""

from __future__ import annotations

import os
from typing import Union

StrOrBytesPath = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]


def to_bytes(value: StrOrBytesPath, what: str) -> bytes:
    """``os.fsencode`` with pycontain's checks: a NUL byte is a ValueError."""
    try:
        encoded = os.fsencode(value)
    except TypeError:
        raise TypeError(
            f"{what} must be str, bytes or os.PathLike, not {type(value).__name__}"
        ) from None
    if b"\0" in encoded:
        raise ValueError(f"{what} contains a NUL byte: {value!r}")
    return encoded
