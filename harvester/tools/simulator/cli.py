"""``harvester simulate``'s running part: a mix from the command line, the simulator
served until SIGTERM/SIGINT (:mod:`harvester.commands.simulate` is its parser)."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from harvester.errors import UserError
from harvester.tools.simulator.app import Simulator, serve
from harvester.tools.simulator.plans import Mix, parse_overrides


def cmd_simulate(args: Any) -> int:
    try:
        mix = Mix.preset(args.mix, **parse_overrides(args.set))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    simulator = Simulator(mix, token=args.token or None, record=not args.no_record)

    async def main() -> None:
        runner, port = await serve(simulator, args.host, args.port)
        print(f"HARVESTER_API_BASE_URL=http://{args.host}:{port}", flush=True)
        if args.token:
            print(f"HARVESTER_API_TOKEN={args.token}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    except OSError as exc:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    return 0
