"""The settlement writer in a process of its own, against real databases (SQLite, PostgreSQL):
batches reach the database once, a child that dies is replaced without losing or doubling a
record, the child finishes what it received when the gateway goes away, refusals are counted."""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from support.rows import usage_row

from tokenport.clock import FakeClock
from tokenport.store.tenants import TenantStore
from tokenport.store.usage import UsageStore
from tokenport.store.writer import BatchWriter
from tokenport.store.writer_process import (
    WriterDied,
    WriterProcess,
    WriterSpec,
    is_transient,
)
from tokenport.tenancy.service import TenancyService

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def tenant_id(engine: Engine, clock: FakeClock) -> str:
    return TenancyService(TenantStore(engine), "overseas", clock).create_tenant("acme").id


@pytest.fixture
def child(database_url: str, engine: Engine, tmp_path: Path):
    proc = WriterProcess(WriterSpec(database_url, None, tmp_path / "dead.jsonl"), poll_s=0.05)
    proc.start()
    yield proc
    proc.close(timeout=30)


def rows(tenant_id: str, ids: range) -> list[dict]:
    """What the settler hands the writer: each usage record (here without a charge)."""
    return [{"usage": usage_row(f"req_{i:04d}", tenant_id, T0 + timedelta(milliseconds=i))} for i in ids]


def ids_in(engine: Engine) -> list[str]:
    return sorted(r["request_id"] for r in UsageStore(engine).query())


def test_batches_are_written_by_the_child_once(child: WriterProcess, engine: Engine, tenant_id: str) -> None:
    assert child.pid is not None and child.pid != os.getpid()
    w = BatchWriter(child.write, flush_interval=0.01, batch_size=7, is_transient=is_transient)
    w.start()
    for row in rows(tenant_id, range(103)):
        w.submit(row)
    w.close(timeout=30)
    assert (w.written, w.pending) == (103, 0)
    assert ids_in(engine) == [f"req_{i:04d}" for i in range(103)]
    pid = child.pid
    child.close(timeout=30)
    assert child.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # exited and reaped


def test_a_killed_child_is_replaced_and_nothing_is_lost_or_doubled(
    child: WriterProcess, engine: Engine, tenant_id: str
) -> None:
    first, second = rows(tenant_id, range(0, 20)), rows(tenant_id, range(20, 50))
    assert child.write(first) == 20
    pid = child.pid
    os.kill(pid, signal.SIGSTOP)  # it can't read the next batch: the child dies during the exchange
    outcome: list[BaseException | int] = []

    def send() -> None:
        try:
            outcome.append(child.write(second))
        except BaseException as exc:
            outcome.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    sender.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], WriterDied)  # not acknowledged: not counted
    w = BatchWriter(child.write, flush_interval=0.01, batch_size=1000, is_transient=is_transient)
    for row in first + second:  # the caller's retry, and a committed batch sent again
        w.submit(row)
    w.start()
    w.close(timeout=30)
    assert child.restarts == 1 and w.written == 50
    assert ids_in(engine) == [f"req_{i:04d}" for i in range(50)]
    assert UsageStore(engine).count() == 50


def test_the_child_writes_what_it_received_when_the_gateway_goes_away(
    child: WriterProcess, engine: Engine, tenant_id: str
) -> None:
    """The gateway killed after handing a batch over: its end of the socket closes, the child
    writes the batch all the same, then exits."""
    proc = child._proc
    assert proc is not None and child._conn is not None
    child._conn.send_bytes(pickle.dumps(rows(tenant_id, range(12))))
    child._conn.close()
    child._conn = None
    assert proc.wait(30) == 0
    child._proc = None
    assert ids_in(engine) == [f"req_{i:04d}" for i in range(12)]


def test_a_refused_row_is_dead_lettered_and_not_counted(
    child: WriterProcess, engine: Engine, tenant_id: str, tmp_path: Path
) -> None:
    batch = rows(tenant_id, range(4))
    batch.insert(2, {"usage": usage_row("req_bad", tenant_id, T0, status=None)})  # NOT NULL: refused
    assert child.write(batch) == 4
    assert ids_in(engine) == [f"req_{i:04d}" for i in range(4)]
    lines = (tmp_path / "dead.jsonl").read_text().splitlines()
    assert len(lines) == 1 and '"req_bad"' in lines[0] and "IntegrityError" in lines[0]


def test_an_energy_window_the_store_refuses_is_dead_lettered_and_the_rest_written(
    child: WriterProcess, engine: Engine, tenant_id: str, tmp_path: Path
) -> None:
    """Energy windows travel in the same batches as usage records; one the store can't take
    neither blocks the batch nor vanishes."""
    batch = [*rows(tenant_id, range(3)), {"energy": "not an allocated window"}]
    assert child.write(batch) == 3  # usage records written (windows are not counted)
    assert ids_in(engine) == [f"req_{i:04d}" for i in range(3)]
    lines = (tmp_path / "dead.jsonl").read_text().splitlines()
    assert len(lines) == 1 and "not an allocated window" in lines[0] and "AttributeError" in lines[0]
    assert child.restarts == 0


def test_records_that_arrive_during_a_write_wait_for_the_next_batch() -> None:
    """After a batch, only full batches are written at once: the rows that came in meanwhile wait
    for the interval (or the close) and go together, instead of as a trickle of tiny batches."""
    calls: list[int] = []
    release = threading.Event()

    def write(batch: list[dict]) -> None:
        calls.append(len(batch))
        if len(calls) == 1:
            release.wait(10)

    w = BatchWriter(write, flush_interval=30, batch_size=1000)
    for i in range(5):
        w.submit({"i": i})
    w.start()
    w._wake.set()
    deadline = time.monotonic() + 10
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    for i in range(3):  # during the first write
        w.submit({"i": i})
    release.set()
    time.sleep(0.2)
    for i in range(4):  # after it, before the next interval
        w.submit({"i": i})
    w.close(timeout=10)
    assert calls == [5, 7]
    assert w.written == 12
