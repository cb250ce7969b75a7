"""The ``bulkjob`` command line: the only part of the package that prints or exits."""

from ._main import EXIT_CODES, main

__all__ = ["EXIT_CODES", "main"]
