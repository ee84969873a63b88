"""The typed errors users see.

Every error the tool raises on purpose derives from :class:`EstaError`. Its message is one line
that says what is wrong and what to do; the CLI prints it and exits with status 2. Anything else
escaping is a bug in esta-export, not a user mistake.
"""

from __future__ import annotations


class EstaError(Exception):
    """Base class: a user-facing problem with a fix. ``str(err)`` is the one line to print."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}; {hint}")


class InputError(EstaError):
    """A command-line value or a file path given by the user is unusable."""


class FormatError(EstaError):
    """A file exists but is not in a format esta-export reads (corrupt, foreign, newer version)."""


class UnsafeFileError(FormatError):
    """A file tried to make the loader run code (a pickle with globals) or escape its folder."""


class ShapeError(FormatError):
    """Tensors do not have the shapes the architecture needs."""


class StitchError(EstaError):
    """Unknown or excluded stitch ids, or a stitch selection that matches nothing."""


class ExportError(EstaError):
    """Building a stitch's graph failed."""


class ValidationError(EstaError):
    """An artifact's outputs differ from its reference beyond the tolerance of its precision.

    Carries which output, how far, and which tolerance, like Optimum's validation errors.
    """

    def __init__(self, message: str, *, metric: str | None = None, value: float | None = None,
                 tolerance: float | None = None, hint: str | None = None) -> None:
        self.metric = metric
        self.value = value
        self.tolerance = tolerance
        super().__init__(message, hint=hint)


class TargetError(EstaError):
    """A target name or a target file is wrong."""


class BackendUnavailableError(EstaError):
    """The runtime a target needs is not installed here (or not on this hardware)."""


class CompileError(EstaError):
    """A backend could not compile a graph for a target."""


class ProfileError(EstaError):
    """Profiling could not run or its records are unreadable."""


class SelectionError(EstaError):
    """Nothing satisfies the requested budget or constraints."""


class BundleError(EstaError):
    """A bundle is missing parts or cannot be written."""


class IntegrityError(BundleError):
    """A file's checksum differs from the one recorded when it was validated."""


class ResourceError(EstaError):
    """Not enough disk or memory for the requested work."""


class TrainingError(EstaError):
    """Training data or training settings are unusable."""


class RemoteError(EstaError):
    """A remote device could not be reached or the remote run failed."""
