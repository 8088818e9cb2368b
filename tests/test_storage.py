"""The disk side of transfers (shell/storage.py): resume records and stale partial files;
and the progress text (core/progress.py)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from core.progress import Progress, clock, describe, progress_line, resuming
from core.transfer_digest import Checkpoint
from shell.storage import DiskStorage
from tests.test_transfer import TID
from tests.test_transfer_digest import hash_list


def partial(tmp_path: Path, data: bytes, recorded: int, size: int) -> DiskStorage:
    storage = DiskStorage(str(tmp_path))
    sink = storage.create(".Yoda_clip.part")
    sink.write([memoryview(data)])
    sink.close()
    chunk = 1_000  # recorded as if it came in 1,000-byte chunks after the first 10,000 bytes
    base, key = min(10_000, recorded), bytes(range(32))
    storage.checkpoint(".Yoda_clip.part", size, Checkpoint(recorded, base, chunk,
                                                           hash_list(data[:recorded], base, chunk, TID, key), TID, key))
    return storage


def test_a_recorded_partial_file_resumes_after_its_verified_prefix(tmp_path: Path) -> None:
    data = os.urandom(3_000_000)
    storage = partial(tmp_path, data[:2_500_000], 2_000_000, len(data))  # written past the record
    found = storage.resume(".Yoda_clip.part", len(data))
    assert found is not None
    offset, prefix, sink = found
    assert offset == 2_000_000 and prefix.digest() == hashlib.sha256(data[:offset]).digest()
    sink.write([memoryview(data)[offset:]])
    sink.close()
    assert (tmp_path / ".Yoda_clip.part").read_bytes() == data  # what followed the record was cut
    storage.commit(".Yoda_clip.part", "Yoda_clip")
    assert sorted(os.listdir(tmp_path)) == ["Yoda_clip"]  # the record goes with it


def test_a_partial_file_that_does_not_match_its_record_is_not_resumed(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    storage = partial(tmp_path, data, 80_000, 200_000)
    assert storage.resume(".Yoda_clip.part", 300_000) is None  # another size
    for position in (5, 50_000):  # a changed byte, in the part hashed whole or in a chunk
        with open(tmp_path / ".Yoda_clip.part", "r+b") as file:
            file.seek(position)
            file.write(bytes([data[position] ^ 1]))
        assert storage.resume(".Yoda_clip.part", 200_000) is None
        (tmp_path / ".Yoda_clip.part").write_bytes(data)
    found = storage.resume(".Yoda_clip.part", 200_000)  # (restored, it does)
    assert found is not None
    found[2].close()
    sidecar = tmp_path / ".Yoda_clip.part.resume"
    assert os.stat(sidecar).st_mode & 0o777 == 0o600  # it holds a (spent) transfer key
    kept = json.loads(sidecar.read_text())
    for field, value in (("key", bytes(32).hex()), ("key", None), ("transfer_id", bytes(16).hex())):
        sidecar.write_text(json.dumps({**kept, field: value}))  # the terms were hashed under others
        assert storage.resume(".Yoda_clip.part", 200_000) is None
    record = {"size": 200_000, "offset": 80_000, "sha256": hashlib.sha256(data[:80_000]).hexdigest()}
    (tmp_path / ".Yoda_clip.part.resume").write_text(json.dumps(record))  # an older client's record
    assert storage.resume(".Yoda_clip.part", 200_000) is None
    (tmp_path / ".Yoda_clip.part").write_bytes(data[:1000])  # shorter than recorded
    assert storage.resume(".Yoda_clip.part", 200_000) is None
    (tmp_path / ".Yoda_clip.part.resume").write_text("{not json")
    assert storage.resume(".Yoda_clip.part", 200_000) is None
    assert storage.resume(".other.part", 200_000) is None  # no record at all
    storage.discard(".Yoda_clip.part")
    assert os.listdir(tmp_path) == []


def test_stale_partial_files_are_cleaned_and_nothing_else(tmp_path: Path) -> None:
    storage = partial(tmp_path, b"x" * 10, 5, 20)
    (tmp_path / ".Luke_new.part").write_bytes(b"fresh")
    (tmp_path / "Yoda_done.mp4").write_bytes(b"a finished file")
    (tmp_path / ".profile").write_bytes(b"someone else's")
    day_ago = time.time() - 25 * 3600
    for name in (".Yoda_clip.part", ".Yoda_clip.part.resume", "Yoda_done.mp4", ".profile"):
        os.utime(tmp_path / name, (day_ago, day_ago))
    assert sorted(storage.clean_stale(24 * 3600)) == [".Yoda_clip.part", ".Yoda_clip.part.resume"]
    assert sorted(os.listdir(tmp_path)) == [".Luke_new.part", ".profile", "Yoda_done.mp4"]


def test_the_progress_text() -> None:
    mib = 1024 * 1024
    line = describe(Progress("clip.mp4 to Luke", 96 * mib, 200 * mib, 41.2e6))
    assert line == "clip.mp4 to Luke: 48% 96.0/200.0 MiB 41.2 MB/s ETA 0:03"
    assert describe(Progress("a from Yoda", 10, 100, 0.0)) == "a from Yoda: 10% 10/100 B"  # no rate yet
    assert describe(Progress("e", 0, 0, 0.0)) == "e: 100% 0/0 B"
    assert progress_line([Progress("a", 1, 2, 0.0), Progress("b", 2, 2, 0.0)]) == "a: 50% 1/2 B | b: 100% 2/2 B"
    assert [clock(s) for s in (0, 7.4, 754, 3723)] == ["0:00", "0:07", "12:34", "1:02:03"]
    assert resuming("clip.mp4", 96 * mib, 200 * mib, "here") == \
        "Resuming clip.mp4 at 48% (96.0 MiB of 200.0 MiB already here)"


def test_the_sweep_runs_once_when_the_directory_is_first_received_into(tmp_path: Path) -> None:
    old = tmp_path / ".Yoda_old.part"
    old.write_bytes(b"stale")
    day_ago = time.time() - 25 * 3600
    os.utime(old, (day_ago, day_ago))
    storage = DiskStorage(str(tmp_path), keep_partial=24 * 3600)
    assert old.exists()  # nothing is touched before a file is received
    storage.create(".Yoda_new.part").close()
    assert sorted(os.listdir(tmp_path)) == [".Yoda_new.part"]
    os.utime(tmp_path / ".Yoda_new.part", (day_ago, day_ago))
    storage.create(".Yoda_next.part").close()
    assert len(os.listdir(tmp_path)) == 2  # once per directory, not per file
