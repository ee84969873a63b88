"""The benchmark report: report.json (versioned), a self-contained report.html and PNG plots."""

from __future__ import annotations

__all__ = ["json_report", "plots", "html", "write_report"]


def write_report(*args, **kwargs):
    """See :func:`esta_export.report.json_report.write_report`."""
    from .json_report import write_report as _write
    return _write(*args, **kwargs)
