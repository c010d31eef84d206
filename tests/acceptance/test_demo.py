"""README "Try it": the demo as a newcomer runs it, twice, and then every command it
suggests, on the embedded PostgreSQL in a data directory of its own."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from harvester.tools.demo import next_commands


def harvester(*args: str, env: dict[str, str], timeout: float = 180
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harvester", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def events(log: Path, name: str) -> list[dict[str, object]]:
    found = []
    for line in log.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == name:
            found.append(event)
    return found


def test_the_demo_suggests_commands_that_show_something_and_its_logs_do_not_grow(
        tmp_path: Path, open_tmp_path: Path) -> None:
    data_dir = open_tmp_path / "data"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "HARVESTER_DATA_DIR": str(data_dir), "COLUMNS": "250"}
    for _ in range(2):
        demo = harvester("demo", "--jobs", "1000", "--max-seconds", "90", env=env)
        assert demo.returncode == 0, demo.stderr[-3000:]
    daemon_log = data_dir / "demo-logs" / "daemon.log"
    # Written afresh by each run: one daemon's start and exit, not one per run so far.
    assert len(events(daemon_log, "daemon.started")) == 1
    assert len(events(daemon_log, "daemon.exit")) == 1

    suggested = [command for command, _ in next_commands(data_dir)]
    assert [line.strip().split("  #")[0].strip() for line in demo.stdout.splitlines()
            if line.startswith("  harvester ")] == suggested
    for command in suggested:
        args = shlex.split(command)[1:]
        if args[0] == "psql":
            args += ["--", "-XAtc", "SELECT count(*) FROM harvester.extraction_results"]
        done = harvester(*args, env=env)
        assert done.returncode == 0, (command, done.stderr)
        assert done.stderr == "", (command, done.stderr)
        out = done.stdout
        # Something to see: no empty list, no requeue of nothing.
        assert not out.startswith("no "), (command, out)
        if args[0] == "status":
            assert re.search(r"│ landed\s+│\s+[1-9]", out), out
        elif args[0] in ("stuck", "jobs"):
            assert re.search(r"│ [0-9a-f]{8}-", out), (command, out)
        elif args[0] == "requeue":
            assert re.match(r"would requeue [1-9][\d,]* job\(s\)", out), out
        else:
            assert int(out) > 0, out
