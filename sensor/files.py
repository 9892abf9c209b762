"""Writing state and data files so that a reader or a crash only ever sees a whole file."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path


def errno_name(exc: OSError) -> str:
    """The errno's name ("ENOSPC", "EROFS", ...): how write failures are counted."""
    return errno.errorcode.get(exc.errno or 0, "error")


def write_atomically(path: Path, data: bytes, mode: int = 0o600, *, unique: bool = False) -> None:
    """Replace `path` by `data` so that it is, at every moment and after any crash, either
    the old file or the new one, whole: written to a temporary file beside it (created
    afresh with `mode`, never through a link), fsynced, renamed over `path`, and the directory
    fsynced. On any error the temporary file is removed (a full disk gets its space back) and
    `path` is untouched unless the rename itself already happened.

    The temporary file is `.<name>.tmp`, or `.<name>.<pid>.tmp` with `unique` when several
    processes may write the same file at once (the geo cache: `analyze` and the daemon)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp" if unique else f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # a leftover of a killed run: never write through someone's file
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # whatever the umask
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                if n <= 0:
                    raise OSError(errno.ENOSPC, "short write")
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
