"""The host side of the timing protocol: the one protocol lives in ``esta_export.runtime.timing``.

The on-device profiler (``esta_runtime.profiler`` in a bundle) and ``esta-export profile`` time
stitches with the same code, thresholds and statistics, so a number means the same wherever it was
measured. This module only re-exports it for the host's profiling package.
"""

from __future__ import annotations

from ..runtime.timing import (CI_METHOD, CV_METRICS, LatencyStats, ProgressFn, Runner,  # noqa: F401
                              TimingProtocol, measure_blocks, median_ci, profile_runners,
                              stats_record, switch_in_stats, visit_order, warm_up)

__all__ = ["CI_METHOD", "CV_METRICS", "LatencyStats", "ProgressFn", "Runner", "TimingProtocol",
           "measure_blocks", "median_ci", "profile_runners", "stats_record", "switch_in_stats",
           "visit_order", "warm_up"]
