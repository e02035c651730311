"""The reader's read-ahead thread (analyzer.ingest.reader._ReadAhead) gives exactly what a plain iteration gives:
the same batches, the same reader warnings at the same place among the dissector's, the same errors, and no thread
left behind when the caller stops early. Real captures: every sample and public capture, plus damaged copies
(cut mid-record, an absurd record length, a cut gzip stream, a pcapng with a bad block length)."""

from __future__ import annotations

import gzip
import struct
import threading
from pathlib import Path

import pytest

import analyzer.ingest.reader as reader
from analyzer.dissect import dissect_capture
from analyzer.ingest import open_capture

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted(p for p in (ROOT / "captures").glob("*") if p.suffix in (".cap", ".pcap", ".pcapng", ".gz"))


def damaged_copies(tmp: Path, public_dir: Path) -> list[Path]:
    base = ROOT / "captures" / "async_wait.pcap"
    data = base.read_bytes()
    out = []
    cut = tmp / "cut.pcap"
    cut.write_bytes(data[: len(data) * 2 // 3])  # ends inside a record
    out.append(cut)
    absurd = bytearray(data)
    # the 10th record's captured length made absurd: frames before it are read, a warning names the offset
    pos = 24
    for _ in range(9):
        pos += 16 + struct.unpack_from("<I", absurd, pos + 8)[0]
    struct.pack_into("<I", absurd, pos + 8, 0x7FFFFFF0)
    (tmp / "absurd.pcap").write_bytes(bytes(absurd))
    out.append(tmp / "absurd.pcap")
    whole = gzip.compress(data)
    (tmp / "cut.pcap.gz").write_bytes(whole[: len(whole) - 40])  # gzip stream cut short
    out.append(tmp / "cut.pcap.gz")
    ng = (public_dir / "wiki-ShortMAPI.pcapng").read_bytes()
    (tmp / "cut.pcapng").write_bytes(ng[: len(ng) - 100])
    out.append(tmp / "cut.pcapng")
    return out


def read_all(path: Path, read_ahead: bool, batch_size: int):
    """Every batch's columns and bytes, with the reader's warnings and truncated flag as the caller sees them when
    it receives that batch (so a warning handed over too early or too late shows)."""
    with open_capture(path) as cap:
        info = cap.info
        batches = [(b.first_number, list(b.offset), list(b.caplen), list(b.origlen), list(b.time), list(b.linktype),
                    bytes(b.buf[int(b.offset[0]): int(b.offset[-1]) + int(b.caplen[-1])]) if len(b) else b"",
                    list(info.warnings), info.truncated)
                   for b in cap.batches(batch_size=batch_size, read_ahead=read_ahead)]
        return batches, info.frames, list(info.warnings), info.truncated, dict(info.linktypes)


def test_read_ahead_gives_the_batches_and_warnings_of_a_plain_iteration(tmp_path, public_dir):
    files = SAMPLES + sorted(p for p in public_dir.glob("*") if p.suffix in (".pcap", ".pcapng", ".cap"))
    files += damaged_copies(tmp_path, public_dir)
    damaged_warned = 0
    for path in files:
        for batch_size in (7, 65536):  # many handovers, and one
            plain = read_all(path, False, batch_size)
            ahead = read_all(path, True, batch_size)
            assert ahead == plain, (path.name, batch_size)
        damaged_warned += bool(plain[2]) and path.parent == tmp_path
    assert damaged_warned == 4  # every damaged copy really produced a reader warning


def test_reader_warnings_keep_their_place_among_the_dissectors(tmp_path, public_dir, monkeypatch):
    """dissect_capture puts the dissector's warnings into the same info.warnings list as the reader's: with the
    read-ahead the reader's end-of-file warning still comes after the dissector's warnings on the last batch."""
    for path in damaged_copies(tmp_path, public_dir) + [ROOT / "captures" / "callback_unreachable_nat.pcap"]:
        monkeypatch.setattr(reader, "READ_AHEAD", False)
        events_plain, info_plain = dissect_capture(path)
        monkeypatch.setattr(reader, "READ_AHEAD", True)
        events_ahead, info_ahead = dissect_capture(path)
        assert events_ahead == events_plain, path.name
        assert [str(w) for w in info_ahead.warnings] == [str(w) for w in info_plain.warnings], path.name
        assert info_ahead.truncated == info_plain.truncated


def test_stopping_early_leaves_no_thread_and_the_capture_closes(public_dir):
    path = public_dir / "wiki-ShortMAPI.pcapng"
    with open_capture(path) as cap:
        it = iter(cap.batches(batch_size=1, read_ahead=True))
        next(it)
        it.close()  # the caller stops after one batch
        assert not [t for t in threading.enumerate() if t.name == "mailpush-read-ahead"]
        assert cap._walker.info is cap.info  # the walker reports into the capture's info again
        # and a plain iteration afterwards reads the whole file
        assert sum(len(b) for b in cap.batches(read_ahead=False)) == 22


def test_an_error_in_the_read_ahead_thread_reaches_the_caller(tmp_path, monkeypatch):
    """A decompression limit hit inside the thread is raised to the caller, as without the thread."""
    from analyzer.ingest import limits

    big = tmp_path / "zeros.pcap.gz"
    head = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    record = struct.pack("<IIII", 0, 0, 60, 60) + b"\0" * 60
    big.write_bytes(gzip.compress(head + record * 200_000, compresslevel=9))
    monkeypatch.setenv(limits._ENV["max_bytes"], str(1 << 20))
    messages = []
    for read_ahead in (False, True):
        with open_capture(big) as cap:
            with pytest.raises(limits.CaptureLimitError) as err:
                for _ in cap.batches(batch_size=1000, read_ahead=read_ahead):
                    pass
        messages.append(str(err.value))
    assert messages[0] == messages[1] and "limit" in messages[0]
    assert not [t for t in threading.enumerate() if t.name == "mailpush-read-ahead"]
