"""The runtime's errors: one line each, saying what is wrong and what to do.

On a device the runtime runs without esta-export installed (copied into the bundle as
``esta_runtime``), so it cannot rely on ``esta_export.errors``. Where esta-export is importable the
classes derive from its typed errors, so the CLI reports them as user errors (exit status 2).
"""

from __future__ import annotations

try:  # esta_export/__init__ and errors.py are pure Python: cheap to import where installed
    from esta_export.errors import BundleError as _BundleBase
    from esta_export.errors import IntegrityError as _IntegrityBase
    from esta_export.errors import SelectionError as _SelectionBase
    from esta_export.errors import UnsafeFileError as _UnsafeBase
    from esta_export.errors import ProfileError as _ProfileBase
except ImportError:  # on the device
    class _EstaLike(Exception):
        def __init__(self, message: str, *, hint: str | None = None) -> None:
            self.message, self.hint = message, hint
            super().__init__(message if hint is None else f"{message}; {hint}")

    class _BundleBase(_EstaLike):  # type: ignore[no-redef]
        pass

    class _IntegrityBase(_BundleBase):  # type: ignore[no-redef]
        pass

    class _SelectionBase(_EstaLike):  # type: ignore[no-redef]
        pass

    class _UnsafeBase(_EstaLike):  # type: ignore[no-redef]
        pass

    class _ProfileBase(_EstaLike):  # type: ignore[no-redef]
        pass


class BundleError(_BundleBase):
    """The bundle is missing parts, is malformed, or asks for something this runtime lacks."""


class ManifestVersionError(BundleError):
    """The manifest was written by a newer esta-export than this runtime understands."""


class IntegrityError(_IntegrityBase, BundleError):
    """A file differs from the checksum recorded when its stitch was validated."""


class NoStitchFitsError(_SelectionBase):
    """No bundled stitch meets the requested latency budget or accuracy."""


class UnsafeBundleError(_UnsafeBase, BundleError):
    """A path in the bundle tries to leave the bundle folder."""


class EngineMismatchError(BundleError):
    """A TensorRT plan was built for another TensorRT version or GPU than the one found here."""


class TimingError(_ProfileBase):
    """The timing protocol's settings cannot measure anything (no runs, bad thresholds)."""
