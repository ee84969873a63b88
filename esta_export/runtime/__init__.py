"""The stitch-switching runtime: open a bundle, pick a stitch by budget, switch at run time.

Imports only the standard library and numpy at import time (ONNX Runtime when a session is
created), never torch or the rest of esta-export: the bundle ships a copy of this package as
``esta_runtime`` so devices run it with numpy and one inference runtime only.
"""

from .bundle import Bundle, Stitch
from .errors import (BundleError, EngineMismatchError, IntegrityError, ManifestVersionError,
                     NoStitchFitsError, UnsafeBundleError)
from .governor import Governor
from .manifest import SCHEMA, SCHEMA_VERSION, load_manifest
from .preprocess import preprocess, softmax

__all__ = ["Bundle", "Stitch", "Governor", "BundleError", "EngineMismatchError", "IntegrityError",
           "ManifestVersionError", "NoStitchFitsError", "UnsafeBundleError", "SCHEMA",
           "SCHEMA_VERSION", "load_manifest", "preprocess", "softmax"]
