"""The simulated upstream's plans: deterministic per job, shares as configured."""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import fields
from uuid import UUID

import pytest

from harvester.tools.simulator import Mix, Step, parse_overrides, plan_for

SAMPLE = 20_000


def uuids(n: int, seed: int = 7) -> list[UUID]:
    rng = random.Random(seed)
    return [UUID(int=rng.getrandbits(128), version=4) for _ in range(n)]


IDS = uuids(SAMPLE)
SHARES = {"stuck": 0.05, "stuck_then_land": 0.02, "not_found_failed": 0.03,
          "not_found_running": 0.04, "not_found_unknown": 0.01, "forbidden": 0.02, "gone": 0.01,
          "malformed": 0.10, "fault": 0.15, "slow": 0.02, "truncated": 0.03, "huge": 0.01}


def test_plan_is_deterministic() -> None:
    mix = Mix.preset("chaos")
    for job_id in IDS[:500]:
        assert plan_for(job_id, mix) == plan_for(job_id, Mix.preset("chaos"))


def test_seed_changes_the_fates() -> None:
    one, other = Mix.preset("chaos", seed=1), Mix.preset("chaos", seed=2)
    fates = [(plan_for(j, one).fate, plan_for(j, other).fate) for j in IDS[:2000]]
    assert sum(a != b for a, b in fates) > 200


def test_shares_are_respected() -> None:
    mix = Mix.preset("first-poll", pending_max=2, **SHARES)
    counts = Counter(plan_for(job_id, mix).fate.split(":")[0] for job_id in IDS)
    expected = {**SHARES, "plain": 1 - sum(SHARES.values())}
    assert set(counts) == set(expected)
    for fate, share in expected.items():
        # Five standard deviations of a binomial count: a wrong share misses by far more.
        tolerance = 5 * math.sqrt(share * (1 - share) / SAMPLE)
        assert abs(counts[fate] / SAMPLE - share) <= tolerance, (fate, counts[fate])


def test_zero_shares_mean_plain_jobs() -> None:
    mix = Mix(pending_min=2, pending_max=2, retry_after=3.0)
    for job_id in IDS[:200]:
        plan = plan_for(job_id, mix)
        assert plan.fate == "plain"
        assert plan.steps == [Step("202", 3.0, "header"), Step("202", 3.0, "header"), Step("200")]


def test_pending_counts_and_styles_cover_their_ranges() -> None:
    mix = Mix(pending_min=1, pending_max=4, retry_after_style="mixed")
    pendings: Counter[int] = Counter()
    styles: Counter[str] = Counter()
    for job_id in IDS[:4000]:
        steps = plan_for(job_id, mix).steps
        assert steps[-1] == Step("200")
        waits = steps[:-1]
        assert all(step.kind == "202" for step in waits)
        pendings[len(waits)] += 1
        styles.update({step.style for step in waits})
    assert set(pendings) == {1, 2, 3, 4}
    assert min(pendings.values()) > 4000 / 4 * 0.8
    assert set(styles) == {"header", "date", "body", "none"}


def test_fate_shapes() -> None:
    mix = Mix(stuck=0.2, not_found_failed=0.2, not_found_unknown=0.2, malformed=0.2, fault=0.2,
              fault_polls=3)
    seen: set[str] = set()
    for job_id in IDS[:2000]:
        plan = plan_for(job_id, mix)
        seen.add(plan.fate)
        kinds = [step.kind for step in plan.steps]
        if plan.fate == "stuck":
            assert kinds == ["500"]
        elif plan.fate == "not_found_failed":
            assert (kinds, plan.batch_status) == (["404"], "failed")
        elif plan.fate == "not_found_unknown":
            assert (kinds, plan.batch_status) == (["404"], None)
        elif plan.fate.startswith("malformed:"):
            assert kinds == [plan.fate.split(":")[1], "200"]
        elif plan.fate.startswith("fault:"):
            assert kinds == [plan.fate.split(":")[1]] * 3 + ["200"]
    variants = {"malformed:" + v for v in ("html", "badjson", "mismatch", "badfield", "textplain")}
    variants |= {"fault:" + v for v in ("502", "503", "504", "reset")}
    assert variants <= seen


# ---------------------------------------------------------------- Step.parse


@pytest.mark.parametrize(
    ("text", "step"),
    [
        ("200", Step("200")),
        ("202", Step("202", None, "header")),
        ("202:3", Step("202", 3.0, "header")),
        ("202:3:date", Step("202", 3.0, "date")),
        ("202:1.5:body", Step("202", 1.5, "body")),
        ("202::none", Step("202", None, "none")),
        ("429:2", Step("429", 2.0)),
        ("slow:4", Step("slow", 4.0)),
        ("  500 \n", Step("500")),
        ("reset", Step("reset")),
    ],
)
def test_step_parse(text: str, step: Step) -> None:
    assert Step.parse(text) == step


def test_step_parse_refuses_a_bad_delay() -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - float() says what was wrong
        Step.parse("202:soon")


# ---------------------------------------------------------------- presets and overrides


def test_presets() -> None:
    assert Mix.preset("first-poll") == Mix()
    demo = Mix.preset("demo")
    assert (demo.pending_min, demo.pending_max, demo.retry_after_style) == (0, 0, "mixed")
    assert (demo.run_min, demo.run_max) == (1.0, 12.0)  # rows arrive as jobs finish
    lifecycle = Mix.preset("lifecycle")
    assert (lifecycle.done_share, lifecycle.run_min, lifecycle.run_max) == (0.25, 2.0, 120.0)
    assert (lifecycle.index_seconds, lifecycle.retry_after) == (4.0, 5.0)
    chaos = Mix.preset("chaos", seed=9, fault=0.5)
    assert (chaos.seed, chaos.fault, chaos.malformed) == (9, 0.5, 0.06)
    assert Mix.preset("pending").pending_max == 5


def test_preset_refuses_an_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"unknown mix 'wild'.*first-poll.*chaos"):
        Mix.preset("wild")


@pytest.mark.parametrize(("field", "value"), [("retry_after_style", "soon"),
                                               ("rate_retry_after_style", "body")])
def test_preset_refuses_an_unknown_style(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"{field} must be one of"):
        Mix.preset("demo", **{field: value})


def test_preset_refuses_unknown_fields() -> None:
    with pytest.raises(ValueError, match=r"unknown mix field\(s\): colour, stcuk"):
        Mix.preset("demo", stcuk=0.5, colour="red", seed=3)


def test_overrides_are_typed_after_the_field() -> None:
    overrides = parse_overrides(["stuck=0.1", "pending-max=3", "retry_after_style=date", "seed=9",
                                 "retry_after=2", " huge_bytes =1024"])
    assert overrides == {"stuck": 0.1, "pending_max": 3, "retry_after_style": "date", "seed": 9,
                         "retry_after": 2.0, "huge_bytes": 1024}
    assert type(overrides["pending_max"]) is int
    assert type(overrides["retry_after"]) is float
    mix = Mix.preset("chaos", **overrides)
    assert (mix.stuck, mix.pending_max, mix.retry_after_style) == (0.1, 3, "date")


def test_every_field_can_be_overridden() -> None:
    samples = {"int": "2", "float": "0.5", "str": "header"}
    pairs = [f"{f.name}={samples[str(f.type)]}" for f in fields(Mix)]
    assert Mix.preset("first-poll", **parse_overrides(pairs)).seed == 2


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("stuck", "expected FIELD=VALUE"),
        ("nope=1", "expected FIELD=VALUE with FIELD one of pending_min"),
        ("=1", "expected FIELD=VALUE"),
        ("pending_max=2.5", "pending_max takes a int"),
        ("stuck=lots", "stuck takes a float"),
        ("seed=", "seed takes a int"),
    ],
)
def test_override_errors(pair: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_overrides([pair])
