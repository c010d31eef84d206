"""Tools around the daemon, not part of it: the simulated upstream, the demo, the bench.

They ship in the wheel because the README, CI and ``deploy/compose.yaml`` use them
(``harvester simulate``, ``harvester demo``, ``harvester bench``), but the daemon never
imports them.
"""
