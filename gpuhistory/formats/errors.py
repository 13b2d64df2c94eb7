"""The error every file reader raises: where in the file, and what is wrong."""

from __future__ import annotations


class FormatError(ValueError):
    def __init__(self, path: str, line: int | None, message: str) -> None:
        self.path, self.line, self.message = path, line, message
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")
