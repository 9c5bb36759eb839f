"""Segmentation backends: one tile in, labels out.

Backends follow :class:`Backend` and register under the ``tiledseg.backends`` entry-point group;
:func:`get_backend` builds one by name. Heavy frameworks are imported only when a backend runs.
"""

from __future__ import annotations

from tiledseg.segment._inmemory import InMemoryResult, run_backend, segment_array
from tiledseg.segment._prepare import (
    ChannelRoles,
    channel_roles_from_panel,
    prepare_groups,
    resolve_channel_roles,
)
from tiledseg.segment._protocol import PREPARED_BINS, Backend, BaseBackend, ChannelStatistics
from tiledseg.segment._registry import (
    available_backends,
    get_backend,
    register_backend,
    unregister_backend,
)

__all__ = [
    "PREPARED_BINS",
    "Backend",
    "BaseBackend",
    "ChannelRoles",
    "ChannelStatistics",
    "InMemoryResult",
    "available_backends",
    "channel_roles_from_panel",
    "get_backend",
    "prepare_groups",
    "register_backend",
    "resolve_channel_roles",
    "run_backend",
    "segment_array",
    "unregister_backend",
]
