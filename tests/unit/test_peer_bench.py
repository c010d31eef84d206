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


def run(round_: int | None, batch: int | None, seconds: float, cpu: float = 100.0) -> object:
    return bench.Run(round_, "ours" if batch is None else "peer", batch, 1000, seconds,
                     {"consumer": cpu, "postgres": 50.0, "simulator": 50.0, "feeder": 9.0})


def test_the_peer_is_the_batch_size_with_the_best_median_in_the_sweep() -> None:
    # b=10 has the fastest single run, b=50 the best median
    sweep = [run(None, 10, 0.5), run(None, 50, 1.0), run(None, 10, 2.0), run(None, 50, 0.8),
             run(None, 10, 2.0), run(None, 50, 1.0)]
    assert bench.best_batch(sweep) == 50
    with pytest.raises(ValueError, match="no run of the peer"):
        bench.best_batch([])


def test_each_round_compares_its_own_pair() -> None:
    pairs = [run(0, 50, 1.0, cpu=300.0), run(0, None, 0.4),
             run(1, None, 0.5), run(1, 50, 0.8, cpu=200.0),
             run(2, 50, 1.0, cpu=200.0), run(2, None, 0.5)]
    summary = bench.summarize(50, pairs)
    assert summary.ratios == [2.5, 1.6, 2.0]
    assert summary.median_ratio == 2.0
    assert summary.cpu_ratios == [2.0, 1.5, 1.5]
    text = bench.report([run(None, 10, 2.0), run(None, 50, 1.0)], pairs, summary)
    assert "harvester/peer jobs/s by round: 2.50, 1.60, 2.00; median 2.00" in text
    assert "peer/harvester CPU per job by round: 2.00, 1.50, 1.50; median 1.50" in text
    marked = [line for line in text.splitlines() if line.endswith("<- the peer")]
    assert len(marked) == 1
    assert marked[0].startswith("peer b=50 ")
    # harvester's medians: 3 runs, 2,000 jobs/s, CPU 100 + 50 + 50 = 200 with the feeder apart
    assert any(line.split() == ["harvester", "3", "2,000", "100", "50", "50", "200", "9"]
               for line in text.splitlines())


def test_a_summary_needs_a_round_with_both_sides() -> None:
    with pytest.raises(ValueError, match="harvester and of the peer"):
        bench.summarize(10, [run(0, 10, 1.0), run(1, None, 1.0)])


def test_the_cpu_total_leaves_the_feeder_apart_and_needs_every_part() -> None:
    whole = bench.Run(0, "ours", None, 10, 1.0, {"consumer": 1.0, "postgres": 2.0,
                                                 "simulator": 3.0, "feeder": 4.0})
    assert whole.cpu_total == 6.0
    assert bench.Run(0, "ours", None, 10, 1.0, {"consumer": 1.0}).cpu_total is None


def test_the_order_alternates_between_rounds_and_passes() -> None:
    assert bench.pair_order(0) == ["peer", "ours"]
    assert bench.pair_order(1) == ["ours", "peer"]
    assert bench.sweep_order(0, [10, 50, 100]) == [10, 50, 100]
    assert bench.sweep_order(1, [10, 50, 100]) == [100, 50, 10]


@pytest.mark.parametrize(("text", "sizes"), [("10,25,50", [10, 25, 50]), ("200, 10,10", [10, 200])])
def test_batch_sizes_are_read_sorted_and_once(text: str, sizes: list[int]) -> None:
    assert bench.batch_sizes(text) == sizes


@pytest.mark.parametrize("text", ["", "0", "10,-5", "ten", "10;20"])
def test_bad_batch_sizes_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        bench.batch_sizes(text)


@pytest.mark.parametrize("argv", [["--rounds", "0"], ["--jobs", "0"], ["--warmup", "-1"],
                                  ["--batch-sizes", "0"], ["--peer-pool-size", "0"],
                                  ["--sweep-rounds", "0"]])
def test_bad_arguments_exit_2_with_one_line(argv: list[str],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.parse(argv)
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("peer-bench: error:")
