"""The operator's commands, one module each: ``add_parser(sub)`` and ``run(settings, args)``.

Each module adds its sub-command to the parser with ``set_defaults(handler=run)``
(procrastinate's ``set_defaults(func=…)`` dispatch); :mod:`harvester.cli` loops over
them in :data:`harvester.cli.COMMANDS` and calls the handler with the settings, built
once at the edge. A command opens one database (:mod:`~harvester.commands.database`),
gets its data as a value, then renders it (a ``render_*`` function per command, tested
without a database), as a readable table or stable JSON (``--json``). Errors a user can
cause come back as :class:`~harvester.errors.UserError` for the CLI to print as one line.
Shared parts: :mod:`~harvester.commands.options` (flags and settings),
:mod:`~harvester.commands.ids` (job IDs streamed into one transaction, one
:class:`~harvester.commands.ids.Tally`), :mod:`~harvester.commands.render`.
"""
