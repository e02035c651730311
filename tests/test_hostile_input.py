"""Hostile capture input (issue 11): decompression bombs are refused early under small limits, temporary files
go only where the operator says, and gzip input reads exactly as zcat reads it."""

from __future__ import annotations

import gzip
import os
import random
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analyzer.ingest import open_capture
from analyzer.ingest.limits import CaptureLimitError, Limits, configure
from analyzer.ingest.reader import GzipStream
from analyzer.pipeline import analyze_capture

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def restore_limits():
    saved = {k: v for k, v in os.environ.items() if k.startswith("MAILPUSH_")}
    yield
    for k in [k for k in os.environ if k.startswith("MAILPUSH_")]:
        del os.environ[k]
    os.environ.update(saved)


def zero_pcap_records(n_frames: int, size: int = 1500) -> bytes:
    """A pcap header and ``n_frames`` Ethernet frames of zeros: compresses ~1000:1 (the shape of a gzip bomb)."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    frame = bytes(size)
    for i in range(n_frames):
        out.append(struct.pack("<IIII", 1_700_000_000 + i, 0, size, size) + frame)
    return b"".join(out)


def gzip_stream_to(path: Path, data_chunks, level: int = 9) -> None:
    with gzip.open(path, "wb", compresslevel=level) as fh:
        for chunk in data_chunks:
            fh.write(chunk)


def pcap_bomb(path: Path, megabytes: int) -> None:
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    record = struct.pack("<IIII", 1_700_000_000, 0, 1500, 1500) + bytes(1500)
    per_mb = (1 << 20) // len(record)

    def chunks():
        yield header
        for _ in range(megabytes):
            yield record * per_mb

    gzip_stream_to(path, chunks())


def netmon_bomb(path: Path, megabytes: int, table_bytes: int = 4) -> None:
    """A NetMon 2.1 header whose frame table claims to sit at the very end, then megabytes of zeros.
    ``table_bytes=0``: no usable frame table, so the reader must spool (random access) instead of streaming."""
    header = bytearray(128)
    struct.pack_into("<4sBBH8HII", header, 0, b"GMBU", 1, 2, 1, 2024, 1, 1, 1, 0, 0, 0, 0, 128 + (megabytes << 20),
                     table_bytes)

    def chunks():
        yield bytes(header)
        for _ in range(megabytes):
            yield bytes(1 << 20)

    gzip_stream_to(path, chunks())


# --- 1, 2: decompression is bounded -----------------------------------------------------------------------------


def test_pcap_gzip_bomb_refused_early_by_ratio_limit(tmp_path):
    bomb = tmp_path / "zeros.pcap.gz"
    pcap_bomb(bomb, 64)  # 64 MB of zero frames in ~70 KB: ratio ~1000:1
    assert bomb.stat().st_size < 1 << 20
    configure(max_ratio=50, ratio_grace=4 << 20)
    t0 = time.monotonic()
    result = analyze_capture(str(bomb))
    assert time.monotonic() - t0 < 20
    assert result.error and "compression ratio above the limit of 50:1" in result.error
    assert "--max-compression-ratio" in result.error


def test_pcap_gzip_bomb_refused_by_size_limit(tmp_path):
    bomb = tmp_path / "zeros.pcap.gz"
    pcap_bomb(bomb, 16)
    configure(max_bytes=4 << 20, max_ratio=0)
    result = analyze_capture(str(bomb))
    assert result.error and "more than the limit of 4 MB" in result.error and "--max-capture-gb" in result.error


def test_gzip_stream_stops_at_the_limit_not_after(tmp_path):
    """The check runs per 2 KiB step: the reader never holds much more than the limit."""
    bomb = tmp_path / "zeros.pcap.gz"
    pcap_bomb(bomb, 8)
    with open(bomb, "rb") as fh:
        gz = GzipStream(fh, Limits(max_bytes=1 << 20, max_ratio=0))
        got = 0
        with pytest.raises(CaptureLimitError):
            while chunk := gz.read(1 << 16):
                got += len(chunk)
    assert got <= (1 << 20) + (3 << 20)  # one step of 2 KiB expands to at most ~2 MiB


def test_ordinary_gzip_capture_passes_the_default_limits(captures_dir):
    plain = analyze_capture(str(captures_dir / "icmp_unreachable.pcap.gz"))
    assert plain.error is None and plain.clients


def test_netmon_gzip_bomb_is_refused_while_streaming(tmp_path):
    bomb = tmp_path / "zeros.cap.gz"
    netmon_bomb(bomb, 32)
    spool_dir = tmp_path / "operator-tmp"
    configure(max_bytes=8 << 20, max_ratio=0, tmp_dir=str(spool_dir))
    result = analyze_capture(str(bomb))
    assert result.error and "more than the limit of 8 MB" in result.error
    assert not spool_dir.exists() or not list(spool_dir.iterdir())


def test_netmon_gzip_bomb_spool_is_bounded_and_under_the_tmp_dir(tmp_path):
    bomb = tmp_path / "zeros.cap.gz"
    netmon_bomb(bomb, 32, table_bytes=0)  # no frame table: random access, so a spool
    spool_dir = tmp_path / "operator-tmp"
    configure(max_bytes=8 << 20, max_ratio=0, tmp_dir=str(spool_dir))
    result = analyze_capture(str(bomb))
    assert result.error and "more than the limit of 8 MB" in result.error
    assert spool_dir.is_dir() and not list(spool_dir.iterdir())  # the anonymous spool was there and is gone


def test_netmon_spool_counts_against_the_free_space_of_the_tmp_dir(tmp_path, monkeypatch):
    bomb = tmp_path / "zeros.cap.gz"
    netmon_bomb(bomb, 1)
    spool_dir = tmp_path / "operator-tmp"
    configure(tmp_dir=str(spool_dir))
    free = shutil.disk_usage(tmp_path).free
    import analyzer.ingest.limits as limits_module

    monkeypatch.setattr(limits_module, "DEFAULT_MIN_FREE", free * 4)  # as if the disk had no room left
    result = analyze_capture(str(bomb))
    assert result.error and f"temporary directory {spool_dir}" in result.error


@pytest.mark.parametrize("name", ["netmon2_push_working.cap", "public:netmon20-wiki-Mixed1.cap",
                                  "public:netmon23-authsod-ex2-1.cap"])
def test_gzip_netmon_is_streamed_without_a_copy_and_reads_as_the_plain_file(tmp_path, captures_dir, name):
    from conftest import PUBLIC

    src = PUBLIC / name.split(":", 1)[1] if name.startswith("public:") else captures_dir / name
    if not src.is_file():
        pytest.skip(f"{src} not present")
    packed = tmp_path / "netmon.cap.gz"
    data = src.read_bytes()
    packed.write_bytes(gzip.compress(data[:1000]) + gzip.compress(data[1000:]))  # two members, for good measure

    def frames_of(path):
        with open_capture(path) as cap:
            out = [(f.number, f.time, f.linktype, bytes(f.data)) for f in cap.frames()]
            return out, list(cap.info.warnings), cap._spool

    plain, plain_warnings, _ = frames_of(src)
    streamed, warnings, spool = frames_of(packed)
    assert spool is None  # no decompressed copy anywhere
    assert streamed == plain and warnings == plain_warnings
    assert len(plain) > 0


def test_real_netmon_gzip_reads_the_same_with_the_spool_in_tmp_dir(tmp_path, captures_dir):
    src = captures_dir / "netmon2_push_working.cap"
    packed = tmp_path / "netmon.cap.gz"
    packed.write_bytes(gzip.compress(src.read_bytes()))
    configure(tmp_dir=str(tmp_path / "spool"))
    a, b = analyze_capture(str(src)), analyze_capture(str(packed))
    assert b.error is None and [c.verdict for c in a.clients] == [c.verdict for c in b.clients]
    assert a.frames == b.frames


def test_cli_flags_set_the_limits(tmp_path):
    bomb = tmp_path / "zeros.pcap.gz"
    pcap_bomb(bomb, 40)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([str(Path(sys.executable).with_name("mailpush")), "analyze", str(bomb),
                          "--max-capture-gb", "0.01", "--max-compression-ratio", "0", "--tmp-dir", str(tmp_path / "t")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 3, run.stderr
    assert "more than the limit of 10.24 MB" in run.stderr or "more than the limit of 0.01 GB" in run.stderr


# --- 3: gzip reads as zcat reads ----------------------------------------------------------------------------------


def zcat(path: Path) -> bytes:
    return subprocess.run(["zcat", str(path)], capture_output=True, timeout=60).stdout


def read_all(path: Path, limits: Limits | None = None) -> tuple[bytes, list[str]]:
    with open(path, "rb") as fh:
        gz = GzipStream(fh, limits or Limits())
        parts = []
        while chunk := gz.read(65536 + 7):
            parts.append(chunk)
    return b"".join(parts), gz.warnings


def multi_member(data: bytes, cuts: list[int], levels) -> bytes:
    pieces = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
    return b"".join(gzip.compress(p, compresslevel=lvl) for p, lvl in zip(pieces, levels))


@pytest.mark.parametrize("seed", range(6))
def test_multi_member_gzip_reads_exactly_as_zcat(tmp_path, captures_dir, seed):
    data = (captures_dir / "push_working.pcap").read_bytes()
    rng = random.Random(seed)
    awkward = [1, 2, 23, 24, 25, 2047, 2048, 2049, 65535, 65536, 1 << 20]
    cuts = sorted({c for c in awkward + [rng.randrange(1, len(data)) for _ in range(5)] if 0 < c < len(data)})
    if seed % 2:
        # incompressible filler makes members whose compressed bytes straddle the 2 KiB steps and 256 KiB reads
        data = data + os.urandom(300_000)
    path = tmp_path / "multi.pcap.gz"
    path.write_bytes(multi_member(data, cuts, [rng.choice([0, 1, 6, 9]) for _ in range(len(cuts) + 1)]))
    assert subprocess.run(["gzip", "-t", str(path)]).returncode == 0
    ours, warnings = read_all(path)
    assert ours == zcat(path) == data
    assert warnings == []


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("read_size", [4096, 65536, 1 << 20])
def test_multi_member_gzip_with_highly_compressible_members_reads_as_zcat(tmp_path, seed, read_size):
    """Members whose 2 KiB of input expand past the reader's request: where zlib's output limit held input back
    (the old reader fed it in twice at the member boundary and saw a CRC error or wrong bytes)."""
    rng = random.Random(seed)
    data = b"".join(rng.randbytes(rng.randrange(1, 3000)) + bytes(rng.randrange(1, 200_000)) for _ in range(20))
    cuts = sorted({rng.randrange(1, len(data)) for _ in range(8)})
    path = tmp_path / "bursty.gz"
    path.write_bytes(multi_member(data, cuts, [9] * (len(cuts) + 1)))
    with open(path, "rb") as fh:
        gz = GzipStream(fh, Limits())
        parts = []
        while chunk := gz.read(read_size):
            parts.append(chunk)
    assert b"".join(parts) == zcat(path) == data


def test_multi_member_gzip_gives_the_same_verdict_as_the_plain_file(tmp_path, captures_dir):
    src = captures_dir / "push_working.pcap"
    data = src.read_bytes()
    path = tmp_path / "push_working.pcap.gz"
    path.write_bytes(multi_member(data, list(range(997, len(data), 997)), [9] * (len(data) // 997 + 1)))
    assert zcat(path) == data
    plain, packed = analyze_capture(str(src)), analyze_capture(str(path))
    assert packed.error is None and not packed.warnings
    assert [(c.client, c.verdict, c.cause, [e.frame for e in c.evidence]) for c in packed.clients] == \
        [(c.client, c.verdict, c.cause, [e.frame for e in c.evidence]) for c in plain.clients]


def test_trailing_garbage_after_members_reads_as_zcat_with_a_warning(tmp_path, captures_dir):
    data = (captures_dir / "push_working.pcap").read_bytes()
    path = tmp_path / "garbage.pcap.gz"
    path.write_bytes(multi_member(data, [5000], [9, 1]) + b"this is not gzip\n" * 10)
    z = subprocess.run(["zcat", str(path)], capture_output=True, timeout=60)
    assert b"trailing garbage ignored" in z.stderr
    ours, warnings = read_all(path)
    assert ours == z.stdout == data
    assert len(warnings) == 1 and "ignored" in warnings[0]
    with open_capture(path) as cap:
        frames = sum(len(b) for b in cap.batches())
        assert any("not gzip and was ignored" in w for w in cap.info.warnings)
        assert not cap.info.truncated
    with open_capture(captures_dir / "push_working.pcap") as cap:
        assert frames == sum(len(b) for b in cap.batches())


def test_zero_padding_after_the_last_member_is_silent(tmp_path, captures_dir):
    data = (captures_dir / "push_working.pcap").read_bytes()
    path = tmp_path / "padded.pcap.gz"
    path.write_bytes(gzip.compress(data) + bytes(4096))
    ours, warnings = read_all(path)
    assert ours == zcat(path) == data and warnings == []


def test_cut_member_still_delivers_what_was_decoded(tmp_path, captures_dir):
    data = (captures_dir / "push_working.pcap").read_bytes()
    packed = multi_member(data, [len(data) // 2], [9, 9])
    path = tmp_path / "cut.pcap.gz"
    path.write_bytes(packed[:-100])
    with open(path, "rb") as fh:
        gz = GzipStream(fh)
        got = b""
        with pytest.raises(EOFError):
            while chunk := gz.read(4096):
                got += chunk
    assert data.startswith(got) and len(got) > len(data) // 2


def synthetic_netmon(n_frames: int, minor: int, seed: int = 1) -> bytes:
    """A NetMon 2.x file with frames of random sizes (so records straddle the reader's 1 MiB windows) and its
    frame table at the end, as NetMon writes it."""
    rng = random.Random(seed)
    header = bytearray(128)
    records, offsets, pos = [], [], 128
    for i in range(n_frames):
        size = rng.choice([60, 1514, rng.randrange(14, 9000)])
        data = rng.randbytes(size)
        rec = struct.pack("<QII", i * 1000, size, size) + data + (struct.pack("<H", 1) if minor >= 1 else b"")
        offsets.append(pos)
        records.append(rec)
        pos += len(rec)
    table = struct.pack(f"<{n_frames}I", *offsets)
    struct.pack_into("<4sBBH8HII", header, 0, b"GMBU", minor, 2, 1, 2024, 1, 1, 1, 0, 0, 0, 0, pos, len(table))
    return bytes(header) + b"".join(records) + table


@pytest.mark.parametrize("minor", [0, 1])
def test_streamed_gzip_netmon_across_many_windows_equals_the_plain_file(tmp_path, minor):
    data = synthetic_netmon(4000, minor)
    assert len(data) > 6 << 20
    plain, packed = tmp_path / "big.cap", tmp_path / "big.cap.gz"
    plain.write_bytes(data)
    packed.write_bytes(gzip.compress(data, 1))

    def read(path):
        with open_capture(path) as cap:
            frames = [(f.number, f.time, f.linktype, bytes(f.data)) for f in cap.frames()]
            return frames, cap.info.warnings, cap._spool

    a, wa, _ = read(plain)
    b, wb, spool = read(packed)
    assert spool is None and len(a) == 4000 and a == b and wa == wb == []
    # cut inside the records: the table is gone, so the spool path reads what is there, as for the plain file
    packed.write_bytes(gzip.compress(data[: len(data) // 2], 1))
    plain.write_bytes(data[: len(data) // 2])
    a, wa, _ = read(plain)
    b, wb, spool = read(packed)
    assert spool is not None and a == b and len(a) > 1000


@pytest.mark.parametrize("block_type,length", [(6, 12), (6, 16), (6, 24), (2, 12), (2, 24)])
def test_pcapng_packet_block_shorter_than_its_header_at_the_end_is_damage_not_a_crash(tmp_path, captures_dir,
                                                                                      block_type, length):
    """An Enhanced (6) or Obsolete (2) Packet Block whose length is valid but below its 28-byte fixed header, as the
    last block of the file: the frames before it are read and a warning names it (the header gather used to read
    past the buffer and raise IndexError / struct.error)."""
    data = (captures_dir / "alter_context.pcapng").read_bytes()
    tail = struct.pack("<II", block_type, length) + bytes(length - 12) + struct.pack("<I", length)
    path = tmp_path / "short-block.pcapng"
    path.write_bytes(data + tail)
    with open_capture(captures_dir / "alter_context.pcapng") as clean:
        expected = sum(len(b) for b in clean.batches())
    with open_capture(path) as cap:
        assert sum(len(b) for b in cap.batches()) == expected
        assert cap.info.warnings == [f"damaged record at byte {len(data)}: packet block of {length} bytes is shorter "
                                     "than its header; frames after it are not read"]
    result = analyze_capture(str(path))  # the whole pipeline too
    assert result.error is None and any("shorter than its header" in w for w in result.warnings)
