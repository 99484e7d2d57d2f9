"""The device-scalar resolver: CUDA scalars reach the store as floats without a ``.item()`` per value, in step
order, and rows wait for their device without losing their place.

This machine has no GPU, so a fake device stands in at the edge: ``FakeCudaTensor.item()`` raises (it would be
a device sync), and ``FakeCopier`` plays the stack / pinned copy / CUDA event with events the test completes
by hand. Real CPU tensors go through the ordinary path; the real copier is checked where CUDA exists.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest

from runlens.collect.device_scalars import DeviceScalarResolver, TorchCopier, is_device_scalar
from runlens.store import Store
from runlens.store.writer import BatchWriter

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class FakeDevice:
    type: str = "cuda"
    index: int = 0


class FakeCudaTensor:
    """A one-element tensor on a CUDA device; converting it on the host would be a device sync."""

    def __init__(self, value: float, device: FakeDevice = FakeDevice()) -> None:
        self.value = value
        self.device = device

    def numel(self) -> int:
        return 1

    def item(self) -> float:
        raise AssertionError("item() on a device tensor: a device sync")

    def __float__(self) -> float:
        raise AssertionError("float() on a device tensor: a device sync")


@dataclass
class FakeHandle:
    values: list[float]
    done: bool = False


@dataclass
class FakeCopier:
    """Records each gather; copies finish when the test says so (``complete``) or at once (``instant``)."""

    instant: bool = True
    finish_on_wait: bool = True
    handles: list[FakeHandle] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)

    def start(self, tensors: Sequence[Any]) -> FakeHandle:
        handle = FakeHandle([t.value for t in tensors], done=self.instant)
        self.handles.append(handle)
        return handle

    def ready(self, handle: FakeHandle) -> bool:
        return handle.done

    def values(self, handle: FakeHandle) -> list[float]:
        assert handle.done, "values read before the copy finished"
        return handle.values

    def wait(self, handle: FakeHandle, timeout: float) -> bool:
        self.waits.append(timeout)
        if self.finish_on_wait:
            handle.done = True
        return handle.done

    def complete(self) -> None:
        for h in self.handles:
            h.done = True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _row(step: int, loss: Any, **extras: Any) -> tuple[Any, ...]:
    """Shaped like the Monitor's step tuple: values at positions, user scalars in a dict."""
    return (step, 1.0 + step, loss, 1e-4, None, 8, None, 0.01, None, extras or None)


def test_device_scalars_are_gathered_once_per_batch_never_item() -> None:
    copier = FakeCopier()
    resolver = DeviceScalarResolver(copier)
    rows = [_row(i, FakeCudaTensor(2.0 + i), acc=FakeCudaTensor(0.5 * i), note="x") for i in range(50)]
    out = resolver.resolve(rows)
    assert [r[0] for r in out] == list(range(50))
    assert [r[2] for r in out] == [2.0 + i for i in range(50)]
    assert [r[9]["acc"] for r in out] == [0.5 * i for i in range(50)]
    assert all(type(r) is tuple and r[9]["note"] == "x" for r in out)
    assert len(copier.handles) == 1 and len(copier.handles[0].values) == 100   # one gather, one event
    assert resolver.held() == 0
    assert all(isinstance(r[9]["acc"], FakeCudaTensor) for r in rows), "the caller's rows are not changed"


def test_plain_rows_pass_through_without_a_gather() -> None:
    copier = FakeCopier()
    resolver = DeviceScalarResolver(copier)
    rows = [_row(i, 1.5, lr=0.1) for i in range(5)]
    assert resolver.resolve(rows) is rows
    assert copier.handles == []


def test_an_unfinished_copy_holds_its_rows_and_every_later_row() -> None:
    copier = FakeCopier(instant=False)
    clock = Clock()
    resolver = DeviceScalarResolver(copier, clock=clock)
    assert resolver.resolve([_row(0, 1.0), _row(1, FakeCudaTensor(2.0))]) == []
    assert resolver.held() == 2
    clock.now += 1.0
    assert resolver.resolve([_row(2, 3.0)]) == [], "a plain row waits behind a held one: steps stay in order"
    assert resolver.held() == 3 and copier.waits == [], "no wait before max_hold"
    copier.complete()
    out = resolver.resolve([_row(3, 4.0)])
    assert [(r[0], r[2]) for r in out] == [(0, 1.0), (1, 2.0), (2, 3.0), (3, 4.0)]
    assert resolver.held() == 0


def test_a_row_held_past_max_hold_is_waited_for() -> None:
    copier = FakeCopier(instant=False)
    clock = Clock()
    resolver = DeviceScalarResolver(copier, max_hold=5.0, hold_wait=2.0, clock=clock)
    assert resolver.resolve([_row(0, FakeCudaTensor(1.0))]) == []
    clock.now += 5.5
    out = resolver.resolve([])
    assert copier.waits == [2.0]
    assert [r[2] for r in out] == [1.0]


def test_a_wait_that_times_out_keeps_holding() -> None:
    copier = FakeCopier(instant=False, finish_on_wait=False)
    clock = Clock()
    resolver = DeviceScalarResolver(copier, max_hold=5.0, clock=clock)
    resolver.resolve([_row(0, FakeCudaTensor(1.0))])
    clock.now += 6.0
    assert resolver.resolve([_row(1, 2.0)]) == []
    assert resolver.held() == 2
    clock.now += 6.0
    assert resolver.resolve([]) == []
    assert len(copier.waits) == 1, "a chunk is waited for once; a hung device must not stall every flush"
    copier.complete()
    assert [r[2] for r in resolver.resolve([])] == [1.0, 2.0]


def test_block_waits_for_held_rows() -> None:
    copier = FakeCopier(instant=False)
    resolver = DeviceScalarResolver(copier, hold_wait=2.0, clock=Clock())
    assert resolver.resolve([_row(0, FakeCudaTensor(7.0))]) == []
    out = resolver.resolve([_row(1, FakeCudaTensor(8.0))], block=True)
    assert [r[2] for r in out] == [7.0, 8.0]
    assert copier.waits and all(w <= 2.0 for w in copier.waits)


def test_resolve_all_at_close_releases_everything() -> None:
    copier = FakeCopier(instant=False)
    resolver = DeviceScalarResolver(copier, close_timeout=3.0, clock=Clock())
    resolver.resolve([_row(0, FakeCudaTensor(1.0))])
    out = resolver.resolve_all([_row(1, FakeCudaTensor(2.0)), _row(2, 3.0)])
    assert [(r[0], r[2]) for r in out] == [(0, 1.0), (1, 2.0), (2, 3.0)]
    assert copier.waits == [3.0, 3.0]
    assert resolver.held() == 0


def test_resolve_all_keeps_the_rows_of_a_device_that_never_answers(caplog: pytest.LogCaptureFixture) -> None:
    copier = FakeCopier(instant=False, finish_on_wait=False)
    resolver = DeviceScalarResolver(copier, clock=Clock())
    out = resolver.resolve_all([_row(0, FakeCudaTensor(1.0), acc=FakeCudaTensor(2.0)), _row(1, 5.0)])
    assert [(r[0], r[2], r[9]) for r in out] == [(0, None, {"acc": None}), (1, 5.0, None)]
    assert resolver.timed_out_values == 2
    assert "still on the device" in caplog.text


def test_tensors_on_two_devices_are_gathered_per_device() -> None:
    copier = FakeCopier()
    resolver = DeviceScalarResolver(copier)
    out = resolver.resolve([_row(0, FakeCudaTensor(1.0, FakeDevice(index=0)),
                                 other=FakeCudaTensor(2.0, FakeDevice(index=1)))])
    assert (out[0][2], out[0][9]["other"]) == (1.0, 2.0)
    assert len(copier.handles) == 2


def test_a_failing_gather_leaves_values_for_the_ordinary_path() -> None:
    class Broken(FakeCopier):
        def start(self, tensors: Sequence[Any]) -> FakeHandle:
            raise RuntimeError("no such device")

    resolver = DeviceScalarResolver(Broken())
    value = FakeCudaTensor(1.0)
    out = resolver.resolve([_row(0, value)])
    assert out[0][2] is value and resolver.held() == 0


def test_dict_rows_are_resolved_too() -> None:
    resolver = DeviceScalarResolver(FakeCopier())
    assert resolver.resolve([{"step": 1, "loss": FakeCudaTensor(0.25)}]) == [{"step": 1, "loss": 0.25}]


def test_is_device_scalar_by_duck_typing() -> None:
    class OnCuda:
        is_cuda = True

        def numel(self) -> int:
            return 1

    class Vector(FakeCudaTensor):
        def numel(self) -> int:
            return 4

    assert is_device_scalar(FakeCudaTensor(1.0)) and is_device_scalar(OnCuda())
    assert not is_device_scalar(Vector(1.0))
    assert not is_device_scalar(FakeCudaTensor(1.0, FakeDevice(type="cpu")))
    assert not is_device_scalar(1.0) and not is_device_scalar("cuda")


def test_torch_is_not_imported_for_duck_typed_values(tmp_path: Path) -> None:
    """Without a torch tensor in sight, the resolver never imports torch (a second of start-up for nothing)."""
    script = tmp_path / "check.py"
    script.write_text(textwrap.dedent("""
        import sys
        from runlens.collect.device_scalars import DeviceScalarResolver

        class Fake:
            is_cuda = True
            def numel(self):
                return 1
            def item(self):
                return 3.0

        rows = [(1, Fake(), 2.0, {"a": Fake()})]
        out = DeviceScalarResolver().resolve(rows)
        assert out[0][1] is rows[0][1], "a non-torch value with no copier is left to the converter"
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if "torch" in m)
        print("ok")
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# -- in the writer --------------------------------------------------------------------------------------------

def _writer(store: Store, job_id: str, resolver: DeviceScalarResolver) -> BatchWriter:
    return BatchWriter(store, job_id, flush_interval=0.05, step_resolver=resolver,
                       step_converter=lambda r: {"step": r[0], "timestamp": r[1], "loss": r[2]}).start()


def _losses(store: Store, job_id: str) -> list[tuple[int, float | None]]:
    return [(r["step"], r["loss"]) for r in store.rows("step_metrics", job_id, order_by="step")]


def test_the_writer_stores_held_steps_in_order_once_their_copy_is_done(
        store: Store, wait_until: Callable[..., Any]) -> None:
    copier = FakeCopier(instant=False, finish_on_wait=False)
    resolver = DeviceScalarResolver(copier, max_hold=600)
    job_id = store.create_job(name="device")
    writer = _writer(store, job_id, resolver)
    try:
        writer.put_step((0, 1.0, FakeCudaTensor(2.5)))
        writer.put_step((1, 2.0, 3.5))
        wait_until(lambda: resolver.held() == 2, message="the steps to be drained and held")
        writer.put_event({"timestamp": 2.5, "event_type": "still_flowing"})
        assert writer.flush(timeout=10)
        assert copier.waits, "a flush someone waits for waits for the device (bounded)"
        assert _losses(store, job_id) == [], "a step whose value is still on the device is held back"
        assert [e["event_type"] for e in store.rows("training_events", job_id)] == ["still_flowing"]
        copier.complete()
        wait_until(lambda: len(_losses(store, job_id)) == 2, message="the held steps to land")
        assert _losses(store, job_id) == [(0, 2.5), (1, 3.5)]
    finally:
        writer.close()


def test_writer_close_resolves_every_held_step(store: Store, wait_until: Callable[..., Any]) -> None:
    copier = FakeCopier(instant=False)   # finishes when waited for
    resolver = DeviceScalarResolver(copier, max_hold=600)
    job_id = store.create_job(name="device-close")
    writer = _writer(store, job_id, resolver)
    writer.put_step((0, 1.0, FakeCudaTensor(4.0)))
    wait_until(lambda: resolver.held() == 1, message="the step to be held")
    assert writer.buffered_rows() == 1
    writer.put_step((1, 2.0, FakeCudaTensor(5.0)))
    writer.close()
    assert not writer.alive and writer.buffered_rows() == 0
    assert _losses(store, job_id) == [(0, 4.0), (1, 5.0)]


def test_writer_close_keeps_the_steps_of_a_device_that_never_answers(store: Store) -> None:
    resolver = DeviceScalarResolver(FakeCopier(instant=False, finish_on_wait=False), max_hold=600)
    job_id = store.create_job(name="device-hung")
    writer = _writer(store, job_id, resolver)
    writer.put_step((0, 1.0, FakeCudaTensor(4.0)))
    writer.put_step((1, 2.0, 6.0))
    writer.close()
    assert _losses(store, job_id) == [(0, None), (1, 6.0)]


@pytest.mark.needs_torch
def test_cpu_torch_tensors_take_the_ordinary_path() -> None:
    torch = pytest.importorskip("torch")
    resolver = DeviceScalarResolver()
    rows = [_row(0, torch.tensor(2.5), acc=torch.tensor(1.0))]
    assert resolver.resolve(rows) is rows
    assert resolver.gathers == 0


@pytest.mark.needs_torch
def test_cpu_torch_tensor_loss_lands_through_the_monitor(db_url: str) -> None:
    torch = pytest.importorskip("torch")
    import runlens
    from runlens.store import open_store

    with runlens.Monitor(name="cpu-tensors", db=db_url) as mon:
        for step in range(3):
            mon.step(step, loss=torch.tensor(2.5 + step), acc=torch.tensor(0.5, dtype=torch.bfloat16))
        job_id = mon.job_id
    store = open_store(db_url)
    try:
        rows = store.rows("step_metrics", job_id)
    finally:
        store.close()
    assert [r["loss"] for r in rows] == [2.5, 3.5, 4.5]
    assert [r["extras"]["acc"] for r in rows] == [0.5] * 3


@pytest.mark.needs_torch
def test_torch_copier_gives_what_item_gives_on_a_real_device() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")

    values = [torch.tensor(1.5, device="cuda", dtype=torch.bfloat16), torch.tensor([2.25], device="cuda"),
              torch.tensor(2**40 + 1, device="cuda"), torch.tensor(True, device="cuda"),
              torch.tensor(0.1, device="cuda", requires_grad=True) * 3]
    rows = [(i, v) for i, v in enumerate(values)]
    resolver = DeviceScalarResolver(TorchCopier(torch))
    out = resolver.resolve(rows, block=True) + resolver.resolve_all()
    assert [r[1] for r in out] == [float(v.item()) for v in values]
