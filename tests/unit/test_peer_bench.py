"""scripts/peer-bench (README "Performance"): the pure parts of the comparison.

The peer must do the same work per job as harvester, or the ratio means nothing: from a
simulator body it writes the very values harvester's model yields. The summary must name
the peer and the ratios as the script's header says. PgQueuer itself is not installed
here (the peer runs in a venv of its own), and no test runs it.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harvester.model import ExtractionResult
from harvester.tools.simulator import result_row

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def load(name: str, path: Path) -> ModuleType:
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while they are built
    loader.exec_module(module)
    return module


bench = load("peer_bench", SCRIPTS / "peer-bench")
peer = load("pgqueuer_harvester", SCRIPTS / "peer" / "pgqueuer_harvester.py")


@given(st.uuids(), st.integers(min_value=0, max_value=2**32))
def test_the_peer_writes_what_harvester_writes(job_id: UUID, seed: int) -> None:
    body = json.dumps(result_row(job_id, seed)).encode()
    model = ExtractionResult.model_validate_json(body)
    row = peer.row_from_body(str(job_id), body)
    assert row == (job_id, model.id, model.org_id, model.domain, model.schema_id,
                   model.data_type, model.raw_blob_key, model.quality_completeness,
                   model.quality_validation, model.quality_composite, model.latency_ms,
                   model.delivered_at, model.created_at, body.decode())


@pytest.mark.parametrize("body", [
    json.dumps(result_row(UUID(int=2))).encode(),  # another job's row
    b"[]",
    b'"text"',
    json.dumps({k: v for k, v in result_row(UUID(int=1)).items() if k != "jobId"}).encode(),
])
def test_the_peer_refuses_a_body_that_is_not_the_row_asked_for(body: bytes) -> None:
    with pytest.raises(peer.BadResult):
        peer.row_from_body(str(UUID(int=1)), body)


def test_the_peer_refuses_a_row_without_a_required_field() -> None:
    document = result_row(UUID(int=1))
    del document["createdAt"]
    with pytest.raises(KeyError):
        peer.row_from_body(str(UUID(int=1)), json.dumps(document).encode())


def run(round_: int, batch: int | None, seconds: float) -> object:
    return bench.Run(round_, "ours" if batch is None else "peer", batch, 1000, seconds,
                     {"consumer": 100.0, "postgres": 50.0, "simulator": 80.0})


def test_the_peer_is_the_batch_size_with_the_best_median() -> None:
    runs = [
        # round 1: b=10 is fastest this once, b=50 is best over the rounds
        run(0, 10, 0.5), run(0, 50, 1.0), run(0, None, 0.4),
        run(1, None, 0.5), run(1, 50, 0.8), run(1, 10, 2.0),
        run(2, 10, 2.0), run(2, 50, 1.0), run(2, None, 0.5),
    ]
    summary = bench.summarize(runs)
    assert summary.best_batch == 50
    assert summary.median_rate == {"harvester": 2000.0, "peer b=10": 500.0,
                                   "peer b=50": 1000.0}
    assert summary.ratios == [2.5, 1.6, 2.0]
    assert summary.median_ratio == 2.0
    assert summary.ratios_best_point == [1.25, 1.6, 2.0]
    text = bench.report(runs, summary)
    assert "ours/peer by round: 2.50, 1.60, 2.00; median 2.00" in text
    assert "peer b=50" in text.split("<- the peer")[0].splitlines()[-1]


def test_a_summary_needs_both_sides() -> None:
    with pytest.raises(ValueError, match="harvester and of the peer"):
        bench.summarize([run(0, 10, 1.0)])


def test_the_cpu_total_leaves_the_feeder_apart_and_needs_every_part() -> None:
    whole = bench.Run(0, "ours", None, 10, 1.0, {"consumer": 1.0, "postgres": 2.0,
                                                 "simulator": 3.0, "feeder": 4.0})
    assert whole.cpu_total == 6.0
    assert bench.Run(0, "ours", None, 10, 1.0, {"consumer": 1.0}).cpu_total is None


def test_rounds_alternate_which_side_runs_last() -> None:
    assert bench.order_of_round(0, [10, 50]) == [10, 50, None]
    assert bench.order_of_round(1, [10, 50]) == [None, 50, 10]
    assert bench.order_of_round(2, [10, 50]) == [10, 50, None]


@pytest.mark.parametrize(("text", "sizes"), [("10,25,50", [10, 25, 50]), ("200, 10,10", [10, 200])])
def test_batch_sizes_are_read_sorted_and_once(text: str, sizes: list[int]) -> None:
    assert bench.batch_sizes(text) == sizes


@pytest.mark.parametrize("text", ["", "0", "10,-5", "ten", "10;20"])
def test_bad_batch_sizes_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        bench.batch_sizes(text)


@pytest.mark.parametrize("argv", [["--rounds", "0"], ["--jobs", "0"], ["--warmup", "-1"],
                                  ["--batch-sizes", "0"], ["--peer-pool-size", "0"]])
def test_bad_arguments_exit_2_with_one_line(argv: list[str],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.parse(argv)
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("peer-bench: error:")
