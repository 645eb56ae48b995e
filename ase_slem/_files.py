"""Atomic file writes: a temporary file in the destination folder, then one rename."""
from __future__ import annotations

import os


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(tmp: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Move the finished temporary file ``tmp`` onto ``dest`` in one rename.

    ``tempfile.mkstemp`` creates files readable by their owner only; the published file gets
    the permissions an ordinary ``open(dest, "w")`` would have given it (0666 minus the umask).
    """
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, dest)
