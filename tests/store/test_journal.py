"""The settlement journal (store/journal.py): what a crashed gateway leaves is recovered once,
by whoever can take its lock, and nothing a live gateway (or its writer) holds is touched."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time

import pytest

from tokenport.store.journal import Journal, orphans, read_items, unpickled
from tokenport.store.writer import BatchWriter


def test_items_survive_a_process_killed_without_closing(tmp_path):
    root = tmp_path / "journal"
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from tokenport.store.journal import Journal\n"
        "j = Journal(Path(sys.argv[1]))\n"
        "j.open()\n"
        "for i in range(100): j.append({'usage': {'request_id': f'r{i}'}})\n"
        "os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(root)], check=False)
    assert proc.returncode == -9
    found = list(orphans(root))
    assert len(found) == 1
    assert [i["usage"]["request_id"] for i in unpickled(found[0].items())] == [f"r{i}" for i in range(100)]
    found[0].discard()
    assert list(root.iterdir()) == []


def test_a_live_journal_is_not_an_orphan_and_settled_segments_go(tmp_path):
    root = tmp_path / "journal"
    j = Journal(root, segment_bytes=200)
    j.open()
    segments = [j.append({"usage": {"request_id": f"r{i}", "pad": "x" * 50}})[0] for i in range(10)]
    assert len(set(segments)) > 2  # rotated
    assert list(orphans(root)) == []  # locked by us
    j.settled(segments[:5])
    left = sorted(p.name for p in j.dir.glob("*.log"))
    assert len(left) < len(set(segments))
    remaining = [i["usage"]["request_id"] for i in unpickled(list(read_items(j.dir)))]
    assert remaining[-1] == "r9" and "r0" not in remaining
    j.settled(segments[5:])
    j.close()
    assert not j.dir.exists()  # nothing pending: removed on a clean close


def test_unsettled_items_stay_after_close(tmp_path):
    root = tmp_path / "journal"
    j = Journal(root)
    j.open()
    j.append({"usage": {"request_id": "kept"}})
    j.close()
    (orphan,) = orphans(root)
    assert [i["usage"]["request_id"] for i in unpickled(orphan.items())] == ["kept"]


def test_a_torn_last_frame_is_skipped(tmp_path):
    root = tmp_path / "journal"
    j = Journal(root)
    j.open()
    j.append({"usage": {"request_id": "whole"}})
    j.append({"usage": {"request_id": "torn"}})
    j.close()
    (segment,) = (root / j.dir.name).glob("*.log")
    segment.write_bytes(segment.read_bytes()[:-3])  # a machine crash mid-write
    (orphan,) = orphans(root)
    assert [i["usage"]["request_id"] for i in unpickled(orphan.items())] == ["whole"]


def test_the_lock_held_by_a_child_fences_recovery(tmp_path):
    """A killed gateway's writer process still holds the lock: its journal waits for it."""
    root = tmp_path / "journal"
    j = Journal(root)
    j.open()
    j.append({"usage": {"request_id": "late"}})
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], pass_fds=[j.lock_fd])
    try:
        os.close(j.lock_fd)  # the gateway dies; its writer lives on
        assert list(orphans(root)) == []
    finally:
        child.kill()
        child.wait()
    (orphan,) = orphans(root)
    assert unpickled(orphan.items()) == [{"usage": {"request_id": "late"}}]


def test_the_writer_recovers_orphans_and_settles_its_own(tmp_path):
    root = tmp_path / "journal"
    dead = Journal(root)
    dead.open()
    for i in range(3):
        dead.append({"usage": {"request_id": f"dead{i}"}})
    os.close(dead.lock_fd)  # died: nothing closed, the lock released by the kernel

    written: list[str] = []
    mine = Journal(root)
    mine.open()
    writer = BatchWriter(
        lambda batch: written.extend(i["usage"]["request_id"] for i in unpickled(batch)),
        flush_interval=0.02,
        journal=mine,
        recover_interval=0.02,
    )
    writer.start()
    writer.submit({"usage": {"request_id": "live"}})
    deadline = time.monotonic() + 10
    while len(written) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    writer.close()
    mine.close()
    assert sorted(written) == ["dead0", "dead1", "dead2", "live"]
    assert writer.recovered == 3
    assert list(root.iterdir()) == []  # both journals gone


def test_flock_is_per_open_file(tmp_path):
    """What the fence relies on: a second open of the lock file cannot take it."""
    j = Journal(tmp_path / "journal")
    j.open()
    fd = os.open(j.dir / "lock", os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
        j.close()
