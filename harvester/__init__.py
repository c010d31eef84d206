"""harvester: mirror justcrawl extraction results into PostgreSQL.

The road a job takes: feed → queue → claim → poll → decide → write → mirror.
"""

from importlib import metadata

try:
    __version__ = metadata.version("harvester")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0.0.0"

__all__ = ["__version__"]
