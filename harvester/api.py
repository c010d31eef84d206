"""The justcrawl API as both sides of this project speak it: paths, limits, job statuses.

The upstream client (:mod:`harvester.upstream`) and the simulated upstream
(:mod:`harvester.tools.simulator`) import these, so the two can never drift apart.
"""

from __future__ import annotations

from typing import Final

RESULTS_PREFIX: Final = "/api/v1/extraction/results/"
BATCH_STATUS_PATH: Final = "/api/v1/jobs/batch-status"
BATCH_STATUS_LIMIT: Final = 100
"""Most job IDs one batch-status call may ask about."""

IN_PROGRESS: Final = frozenset({"pending", "running", "waiting_retry", "extracting"})
"""Upstream job statuses before the result exists: followed through batch-status."""
INDEXING: Final = "extraction_done"
"""Extracted, waiting for the bulk-writer flush: the result endpoint answers 202."""
COMPLETED: Final = "completed"
FINISHED: Final = frozenset({INDEXING, COMPLETED})
"""Statuses after which the result endpoint has (or is about to have) the row."""
FAILED: Final = "failed"
