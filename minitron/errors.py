"""Errors a user can cause. The CLI turns each into one line on stderr and its exit code.

Exit codes (DESIGN.md): 0 success, 1 unexpected failure, 2 bad usage or bad input,
3 target or budget infeasible.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_INFEASIBLE = 3


class MinitronError(Exception):
    """A problem the user can fix; `str(err)` is the one line shown to them."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, flag: str | None = None):
        self.flag, self.message = flag, message
        super().__init__(f"{flag}: {message}" if flag else message)


class InputError(MinitronError):
    """Bad input: a missing or broken path, a malformed file, an unsupported model."""


class CheckpointError(InputError):
    """A checkpoint whose tensors disagree with its config, or that cannot be read."""


class InfeasibleError(MinitronError):
    """The requested target or budget cannot be reached."""

    exit_code = EXIT_INFEASIBLE
