"""Daemons that share one database share what upstream's gateway told them.

README "Pace", several daemons. A gateway's limit belongs to the API token, so it is the
fleet's: when it runs dry, whichever daemon's request arrives first is refused, and that
one alone pausing and cutting its rate leaves the others pushing as before: more
refusals, each costing a Retry-After pause of whoever receives it, and probes of the
others that keep finding the limit. So a daemon whose own answer cut its rate says so
on the channel ``harvester_pace`` (NOTIFY through the database all daemons already
share), and each daemon that hears it settles its own rate as its own refusal would
(:meth:`harvester.pacing.SendRate.heard`). Nothing else travels: no rate is shared, no
row is written, and a daemon that hears nothing (the listener is away) adapts on its own
as before.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Final, Protocol

from harvester.errors import StoreError
from harvester.logs import get_logger
from harvester.observer import Observer
from harvester.pacing import Gate

log = get_logger("harvester.fleet")

PAYLOAD_LIMIT: Final = 1024
"""A longer notification is not one of ours: not even parsed."""


class Announcer(Protocol):
    async def announce_pace(self, payload: str) -> None: ...


class FleetPace:
    """Announces this daemon's refusals and applies the ones it hears."""

    def __init__(self, gate: Gate, store: Announcer, observer: Observer,
                 worker_id: str, refusals: asyncio.Queue[float]) -> None:
        """``refusals``: where the gate puts, with the seconds until sending resumes, each
        answer to this daemon that cut its rate (its ``on_refused`` is that queue's
        ``put_nowait``; both are wired at construction, see :class:`~harvester.engine.Engine`)."""
        self.gate = gate
        self.store = store
        self.observer = observer
        self.worker_id = worker_id
        self._outbox = refusals

    async def run(self) -> None:
        """Announce refusals until cancelled. An announcement that cannot be sent (the
        database is away) is dropped: the others find the limit on their own."""
        failing = False
        while True:
            resume_in = await self._outbox.get()
            payload = json.dumps({"worker": self.worker_id, "resume_in": round(resume_in, 3)})
            try:
                await self.store.announce_pace(payload)
                failing = False
            except StoreError as exc:
                if not failing:
                    log.debug("fleet.announce_failed", error=str(exc))
                    failing = True

    def heard(self, payload: str) -> None:
        """A notification on ``harvester_pace``: another daemon was refused."""
        announced = _parse(payload)
        if announced is None:
            log.debug("fleet.unreadable_notification", length=len(payload))
            return
        worker, resume_in = announced
        if worker == self.worker_id:
            return  # its own announcement, back from the channel
        cuts = self.gate.rate.cuts
        self.observer.transitions(self.gate.heard(resume_in, worker))
        if self.gate.rate.cuts != cuts:
            self.observer.refusal_heard()


def _parse(payload: str) -> tuple[str, float] | None:
    """(worker, resume_in) of an announcement, or None for anything else."""
    if len(payload) > PAYLOAD_LIMIT:
        return None
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    worker, resume_in = data.get("worker"), data.get("resume_in")
    if not isinstance(worker, str) or isinstance(resume_in, bool) \
            or not isinstance(resume_in, int | float) or not math.isfinite(resume_in):
        return None
    return worker, float(resume_in)
