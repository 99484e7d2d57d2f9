"""The step buffer and the columns path: a batch of plain steps is converted in C to the very row values the
row-by-row path gives, anything else takes the row path, a backlog of steps costs a full garbage collection
nothing, and the writer keeps steps in order whichever way they went.

Timing belongs to bench/bench_tightloop.py; these tests check values, order and what the collector walks.
"""

from __future__ import annotations

import collections
import gc
import math
from typing import Any, Sequence

import pytest

import runlens
from runlens.collect.thread_cpu import StepCpuMarks
from runlens.collect.watchdog import HangSettings, Progress, Watchdog
from runlens.store import Store
from runlens.store.bulk import StepColumns
from runlens.store.step_buffer import StepBuffer


def _step(i: int, loss: Any = 0.5, lr: Any = None, grad_norm: Any = None, batch_size: Any = None,
          tokens: Any = None, step_time: Any = 0.01, data_time: Any = None,
          extras: Any = None) -> tuple[Any, ...]:
    """Shaped like the tuple ``Monitor.step()`` appends (``at`` a perf_counter reading)."""
    return (i, 100.0 + i * 0.01, loss, lr, grad_norm, batch_size, tokens, step_time, data_time, extras)


@pytest.fixture
def monitor() -> runlens.Monitor:
    """A Monitor that was never started: only its converter is used."""
    return runlens.Monitor(name="steps-buffer")


def _by_rows(monitor: runlens.Monitor, raws: Sequence[tuple[Any, ...]]) -> StepColumns:
    convert = monitor._convert_step
    return StepColumns.from_rows([convert(raw) for raw in raws])


def _assert_same(a: StepColumns, b: StepColumns) -> None:
    assert a.n == b.n
    assert sorted(a.columns) == sorted(b.columns)
    for name, values in a.columns.items():
        if name == "timestamp":   # perf_counter -> wall clock with the offset of the moment of conversion
            assert all(abs(x - y) < 0.01 for x, y in zip(values, b.columns[name]))
        else:
            assert list(values) == list(b.columns[name]), name
            assert [type(v) for v in values] == [type(v) for v in b.columns[name]], name
    assert a.nullable == b.nullable


# -- the columns path ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raws", [
    [_step(i) for i in range(50)],
    [_step(i, loss=1.0 / (i + 1), lr=1e-4, grad_norm=2.5, batch_size=8, tokens=512, data_time=0.002)
     for i in range(50)],
    [_step(0, step_time=None, loss=None)] + [_step(i, loss=float(i), tokens=i * 3.0) for i in range(1, 20)],
    [_step(i, loss=-0.0, lr=5e-324, grad_norm=1e300, batch_size=None if i % 2 else 4) for i in range(7)],
    [_step(0)],
], ids=["loss-only", "every-field", "first-step-and-ints", "edge-floats", "one-step"])
def test_the_columns_path_gives_what_the_row_path_gives(monitor: runlens.Monitor,
                                                        raws: list[tuple[Any, ...]]) -> None:
    batch = monitor._convert_step.columns(raws)
    assert batch is not None
    _assert_same(batch, _by_rows(monitor, raws))


def test_the_rank_is_a_column_of_every_row(monitor: runlens.Monitor) -> None:
    monitor._rank = 3
    raws = [_step(i) for i in range(5)]
    batch = monitor._convert_step.columns(raws)
    assert batch is not None and batch.columns["rank"] == (3,) * 5
    _assert_same(batch, _by_rows(monitor, raws))


class _DeviceScalar:
    """Has ``.item()`` like a tensor; turning it into a float is the row path's job."""

    def item(self) -> float:
        return 2.0


@pytest.mark.parametrize("odd", [
    _step(3, loss=math.nan), _step(3, lr=math.inf), _step(3, tokens=-math.inf),
    _step(3, extras={"acc": 0.9}), _step(3, loss=_DeviceScalar()), _step(3, grad_norm="1.5"),
    _step(3, batch_size=8.0), _step(3, batch_size=True), _step(3, step_time="slow"),
    (True,) + _step(3)[1:], (3.0,) + _step(3)[1:], _step(3)[:9], _step(3, tokens=10**400),
], ids=["nan", "inf", "-inf", "extras", "tensor-like", "text", "float-batch", "bool-batch", "text-time",
        "bool-step", "float-step", "short-tuple", "int-overflows"])
def test_a_batch_with_any_other_value_goes_row_by_row(monitor: runlens.Monitor, odd: tuple[Any, ...]) -> None:
    """None from ``columns``, and nothing recorded: the row path then records the cpu reading and the
    calibration input itself."""
    raws = [_step(i) for i in range(3)] + [odd] + [_step(i) for i in range(4, 6)]
    marks = monitor._cpu_marks = StepCpuMarks(lambda: 1.0)
    marks.mark(collections.deque(raws))
    try:
        refused = monitor._convert_step.columns(raws) is None
    except Exception:   # the writer catches it and converts row by row
        refused = True
    assert refused and marks.raw is raws[-1]


def test_finite_values_whose_sum_overflows_go_row_by_row_unchanged(monitor: runlens.Monitor) -> None:
    raws = [_step(i, loss=1e308) for i in range(3)]
    assert monitor._convert_step.columns(raws) is None
    assert _by_rows(monitor, raws).columns["loss"] == (1e308,) * 3


def test_numpy_scalars_go_row_by_row_and_are_stored_as_floats(monitor: runlens.Monitor) -> None:
    np = pytest.importorskip("numpy")
    raws = [_step(i, loss=np.float32(0.25)) for i in range(3)]
    assert monitor._convert_step.columns(raws) is None
    assert _by_rows(monitor, raws).columns["loss"] == (0.25,) * 3


def test_the_cpu_reading_lands_on_the_step_it_was_taken_with(monitor: runlens.Monitor) -> None:
    marks = monitor._cpu_marks = StepCpuMarks(lambda: 12.5)
    raws = [_step(i) for i in range(8)]
    marks.mark(collections.deque(raws[:5]))   # read while step 4 was the newest buffered
    batch = monitor._convert_step.columns(raws)
    assert batch is not None
    assert batch.columns["thread_cpu_seconds"] == (None,) * 4 + (12.5,) + (None,) * 3
    assert "thread_cpu_seconds" in batch.nullable and marks.raw is None
    assert "thread_cpu_seconds" not in monitor._convert_step.columns(raws).columns   # taken once


def test_the_cpu_reading_follows_the_device_resolvers_copy_of_its_step(monitor: runlens.Monitor) -> None:
    """The resolver hands on copies of the steps whose tensors it replaced; the reading still lands on its step,
    whichever path the batch takes."""
    marks = monitor._cpu_marks = StepCpuMarks(lambda: 7.0)
    raws = [_step(i) for i in range(4)]
    convert = monitor._convert_step
    marks.mark(collections.deque(raws))
    batch = convert.columns([tuple(list(raw)) for raw in raws])
    assert batch is not None and batch.columns["thread_cpu_seconds"] == (None, None, None, 7.0)
    marks.mark(collections.deque(raws))
    rows = [convert(tuple(list(raw))) for raw in raws]
    assert [row["thread_cpu_seconds"] for row in rows] == [None, None, None, 7.0]


def _watchdog() -> Watchdog:
    return Watchdog(lambda: Progress(0.0, None, None, None, 0), HangSettings(), lambda *_: None)


@pytest.mark.parametrize("phase_at", [None, 103.0])
def test_calibration_sees_the_same_intervals_either_way(monitor: runlens.Monitor, phase_at: float | None) -> None:
    """A batch feeds the hang watchdog's budget what ``observe_step`` per row would (warm-up skipped, step
    intervals that span a phase change left out)."""
    raws = [_step(0, step_time=None)] + [_step(i, step_time=0.01 * (1 + i % 7)) for i in range(1, 700)]
    by_rows, by_batch = _watchdog(), _watchdog()
    for wd in (by_rows, by_batch):
        if phase_at is not None:
            wd.phase_marks.append(phase_at)
    for raw in raws:
        by_rows.observe_step(raw[1], raw[7])
    monitor._watchdog = by_batch
    assert monitor._convert_step.columns(raws) is not None
    assert by_batch.budget.seen == by_rows.budget.seen
    assert list(by_batch.budget.intervals) == list(by_rows.budget.intervals)
    assert list(by_batch.phase_marks) == list(by_rows.phase_marks)


# -- the buffer ------------------------------------------------------------------------------------------------


def _walked(root: object) -> int:
    """How many references a full collection follows from the tracked containers reachable from ``root`` (not
    through an instance, whose class leads to every module)."""
    seen: set[int] = set()
    todo = [root]
    walked = 0
    while todo:
        obj = todo.pop()
        if id(obj) in seen or not gc.is_tracked(obj):
            continue
        seen.add(id(obj))
        refs = gc.get_referents(obj)
        walked += len(refs)
        todo.extend(refs)
    return walked


def test_a_backlog_of_steps_costs_a_full_collection_nothing() -> None:
    """A deque of a million step tuples is walked element by element at every full collection (on whichever
    thread triggers it: the training thread, in a tight loop); the buffer's chunks are untracked."""
    buffer = StepBuffer(dict)
    buffer.raw.extend(_step(i) for i in range(100_000))
    gc.collect()
    assert _walked(vars(buffer)) >= 100_000
    buffer.absorb()
    gc.collect()
    gc.collect()   # a chunk is untracked by the first collection that finds its steps untracked already
    assert not buffer.raw and len(buffer) == 100_000
    assert _walked(vars(buffer)) < 1_000


def test_drops_take_the_oldest_steps_first_at_every_stage() -> None:
    buffer = StepBuffer(lambda raw: {"step": raw[0], "timestamp": raw[1]})
    buffer.raw.extend(_step(i) for i in range(100))
    buffer.fill(30)                                   # 0..29 converted, 30..99 in the backlog
    buffer.raw.extend(_step(i) for i in range(100, 120))
    assert buffer.pending_rows == 30 and len(buffer) == 120
    assert buffer.drop_oldest(50) == 50               # all 30 pending, then 30..49 of the backlog
    buffer.fill(1000)
    kept = list(StepColumns.concat(buffer.pending).columns["step"])
    assert kept == list(range(50, 120))
    assert buffer.committed() == 70 and buffer.out == 120 and len(buffer) == 0


def test_a_buffer_without_a_columns_form_converts_row_by_row() -> None:
    rows: list[Any] = []
    buffer = StepBuffer(lambda raw: rows.append(raw) or {"step": raw[0], "timestamp": raw[1]})
    buffer.raw.extend(_step(i) for i in range(10))
    buffer.fill(100)
    assert len(rows) == 10 and buffer.pending_rows == 10


# -- through the Monitor ---------------------------------------------------------------------------------------


def test_steps_stay_in_order_whichever_path_their_batch_took(db_url: str, store: Store) -> None:
    """Plain batches, a batch with a NaN and user scalars, then plain again: stored in order, the odd batch with
    its non-finite record, the others exactly as logged."""
    with runlens.Monitor(name="paths", db=db_url, flush_interval=60.0) as mon:
        for i in range(300):
            mon.step(i, loss=1.0 / (i + 1), batch_size=8)
        assert mon._writer.flush(timeout=30)
        mon.step(300, loss=math.nan, acc=0.5)
        mon.step(301, loss=0.25, acc=0.75)
        assert mon._writer.flush(timeout=30)
        for i in range(302, 600):
            mon.step(i, loss=1.0 / (i + 1), tokens=64)
    steps = store.rows("step_metrics", mon.job_id, order_by="id")
    assert [s["step"] for s in steps] == list(range(600))
    assert steps[7]["loss"] == 1.0 / 8 and steps[7]["batch_size"] == 8 and steps[7]["extras"] is None
    assert steps[300]["loss"] is None and steps[300]["extras"] == {"acc": 0.5, "nonfinite": {"loss": "nan"}}
    assert steps[301]["extras"] == {"acc": 0.75}
    assert steps[599]["loss"] == 1.0 / 600 and steps[599]["tokens"] == 64.0 and steps[599]["batch_size"] is None
    assert steps[0]["step_time_seconds"] is None and all(s["step_time_seconds"] >= 0 for s in steps[1:])
    assert all(a["timestamp"] <= b["timestamp"] for a, b in zip(steps, steps[1:]))
