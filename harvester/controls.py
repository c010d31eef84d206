"""The control requests that tell whose a run of 403s is (README "How upstream answers
are handled", 403): the job's or the token's.

A 403 whose owner the refusals (:mod:`harvester.refusals`, inside the gate) cannot tell
at once waits here for the next control: a GET of a job that landed lately, through the
gate like any request, sent after the refusal came back. While the permission circuit
is open the same loop sends its probes. The engine starts :meth:`Controls.run` as one of
its vital tasks and asks :meth:`Controls.whose` for each 403.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Final
from uuid import UUID

from harvester.batching import wait_set
from harvester.observer import Observer
from harvester.pacing import Gate, Released
from harvester.policy import PolicyConfig, Random, Refusal, Response
from harvester.ports import UpstreamPort
from harvester.status_policy import judge_control

VERDICT_WAIT: Final = 5.0
"""How long a 403 waits for the control that tells whose it is (one GET, with its turn at
the gate); beyond it the refusal is judged not known (README "How upstream answers are
handled")."""
IDLE_CHECK: Final = 5.0
"""With nothing to send, the loop looks again at least this often."""


class Controls:
    """Sends the controls and hands their verdicts to the 403s that wait for them."""

    def __init__(self, gate: Gate, upstream: UpstreamPort, observer: Observer,
                 config: PolicyConfig, rand: Random) -> None:
        self.gate = gate
        self.upstream = upstream
        self.observer = observer
        self.config = config
        self.rand = rand
        self.wanted = asyncio.Event()
        """A refusal waits for a control, or the permission circuit may want a probe."""
        self._verdicts: asyncio.Future[None] | None = None
        """Resolved when the next control is answered: what refusals that asked wait for."""

    async def whose(self, sent: float) -> Refusal:
        """Whose is a 403 to the request that left at ``sent``: the job's or the token's
        (:mod:`harvester.refusals`). Known at once while other requests are answered;
        otherwise the checker sends a control after this refusal came back, and this
        waits for its answer, at most VERDICT_WAIT."""
        refusals = self.gate.refusals
        if refusals.verdict(sent) != "unknown" or not refusals.ask():
            return refusals.verdict(sent)
        if self._verdicts is None:
            self._verdicts = asyncio.get_running_loop().create_future()
        answered = self._verdicts
        self.wanted.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(VERDICT_WAIT):
                await asyncio.shield(answered)
        return refusals.verdict(sent)

    async def run(self) -> None:
        """Sends the controls: one when refusals ask whose they are, and the permission
        circuit's probes while it is open and there is a job to check with."""
        while True:
            job_id, wait = self.gate.refusals.next_control(self.gate.now())
            if job_id is None:
                if self._verdicts is not None and not self.gate.refusals.can_check:
                    self._settle_verdicts(self._verdicts)  # nothing to check with
                    self._verdicts = None
                self.wanted.clear()
                await wait_set(self.wanted, min(wait, IDLE_CHECK))
                continue
            # Refusals that ask from now on wait for the next control: this one may have
            # left before their requests did.
            answered, self._verdicts = self._verdicts, None
            try:
                await self._control(job_id)
            finally:
                if answered is not None:
                    self._settle_verdicts(answered)

    @staticmethod
    def _settle_verdicts(answered: asyncio.Future[None]) -> None:
        if not answered.done():
            answered.set_result(None)

    async def _control(self, job_id: UUID) -> None:
        """GET a job that landed lately, through the gate like any request; not a poll of
        that job (nothing is written for it)."""
        try:
            sent = await self.gate.admit(VERDICT_WAIT, "control")
        except Released:
            self.gate.control_lost(job_id)
            return
        answer = await self.upstream.fetch_result(job_id)
        status = None
        if isinstance(answer, Response):
            status = answer.status
            self.observer.dated(answer.date, self.gate.now() - sent)
        control = judge_control(answer, self.config, datetime.now(UTC), self.rand,
                                self.observer.clock.floor)
        changes = self.gate.controlled(job_id, control, status, sent)
        self.observer.controlled(control, changes)
