"""Errors of the Dask integration."""
from __future__ import annotations

from mmsb.errors import MMSBError


class ClusterError(MMSBError, ConnectionError):
    """The Dask cluster is unreachable, has no workers, or a wave could not be completed on it."""
