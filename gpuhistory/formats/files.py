"""Opening an input file for reading: regular files only, lines of bounded length.

``import`` reads whatever path it is given with the permissions of whoever runs it (the
HTTP API has no import endpoint). A device (``/dev/zero``, ``/dev/urandom``), a FIFO, a
socket or a directory is refused before a byte is read: such a "file" can block forever on
open or never end. The FIFO case is why the file is opened non-blocking and checked with
``fstat`` on the open descriptor, not with a ``stat`` before the open.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

from gpuhistory.formats.errors import FormatError

MAX_LINE_BYTES = 64 * 1024  # far beyond any trace or nvidia-smi row (< 1 KiB)


def open_regular(path: str) -> BinaryIO:
    """The file at ``path`` opened for binary reading; FormatError unless a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise FormatError(path, None, f"cannot open: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                    else "a socket" if stat.S_ISSOCK(mode) else "a device")
            raise FormatError(path, None, f"not a regular file ({kind}): import reads CSV "
                                          "files")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def line_too_long(path: str, line: int) -> FormatError:
    return FormatError(path, line, f"a line longer than {MAX_LINE_BYTES // 1024} KiB: is this "
                                   "a CSV file?")
