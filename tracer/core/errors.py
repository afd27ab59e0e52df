"""Domain errors and exit statuses.

Domain code raises CnitraceError subclasses with a one-line message; the CLI's single
error boundary turns them into that line on stderr and the matching exit status.
"""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    OK = 0
    FAILURE = 1          # the job ran and found it cannot do what was asked (e.g. doctor: no mode possible)
    USAGE = 2            # bad options or input
    INTERRUPTED = 130    # Ctrl-C


class CnitraceError(Exception):
    """An error with a one-line message meant for the user."""

    exit_status = ExitStatus.FAILURE

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message.splitlines()[0] if message else self.__class__.__name__


class UsageError(CnitraceError):
    """The user asked for something invalid: unknown datapath, bad glob, N out of range."""

    exit_status = ExitStatus.USAGE


class ToolError(CnitraceError):
    """A system tool failed or is missing."""


class NotRootError(CnitraceError):
    """The command needs root."""
