"""The PostgreSQL store: adapters along the ports, and every statement in one place.

The database edge of the road (feed → queue → claim → poll → decide → write → mirror),
split by who asks (README "Test it", layout):

- :mod:`~harvester.store.connect`: the pool, and asyncpg's errors translated into the
  project's (:class:`~harvester.errors.StoreUnavailable`, :class:`~harvester.errors.StoreError`);
- :mod:`~harvester.store.queue`: the engine's queue (:class:`~harvester.ports.StorePort`),
  with :mod:`~harvester.store.listen` for LISTEN/NOTIFY;
- :mod:`~harvester.store.purge`: the retention purge (:class:`~harvester.ports.RetentionPort`);
- :mod:`~harvester.store.operators` and :mod:`~harvester.store.figures`: what the
  commands, the admin API and /metrics read and change;
- :mod:`~harvester.store.queries`: the ``.sql`` files holding every statement by name.

Connecting is what every adapter shares, so it is exported here; each adapter is
imported from its own module.
"""

from harvester.database_faults import DSN_VARIABLE
from harvester.store.connect import (
    Connection,
    ConnectTarget,
    create_pool,
    translate,
    translated,
)

__all__ = ["DSN_VARIABLE", "ConnectTarget", "Connection", "create_pool", "translate",
           "translated"]
