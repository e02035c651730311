"""Ingest stage against tshark: same frames (count, numbers, bytes, wire length) and times to the microsecond,
for every public capture and for files in every supported variant made here (editcap conversions, hand-written
big-endian pcap and multi-section pcapng, gzip of each). Plus bad input: truncation at many offsets, non-captures,
empty files, absurd lengths, corrupt gzip and random byte flips (never anything but CaptureError at open)."""

from __future__ import annotations

import calendar
import gzip
import json
import os
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from analyzer.ingest import CaptureError, open_capture
from analyzer.ingest.pcapng import LINKTYPE_PCAPNG_CUSTOM

PUBLIC_FILES = sorted(
    p.name for p in (Path(__file__).resolve().parent.parent.parent / "shared" / "captures" / "public").glob("*")
    if p.suffix in (".cap", ".pcap", ".pcapng")
) or sorted(p.name for p in Path("/work/shared/captures/public").glob("*") if p.suffix in (".cap", ".pcap", ".pcapng"))

SAMPLE_FILES = sorted(p.name for p in (Path(__file__).resolve().parent.parent / "captures").glob("*")
                      if p.suffix in (".cap", ".pcap", ".pcapng", ".gz"))

ETH_UDP = bytes.fromhex("ffffffffffff00112233445508004500001c000100004011f97c0a0000010a000002") + b"\0" * 8
RAW_UDP = bytes.fromhex("4500001c000100004011f97c0a0000010a000002") + b"\0" * 8


# -- helpers -------------------------------------------------------------------------------------------------------

def tshark_frames(path) -> list[tuple[int, float | None, int, str]]:
    """(number, epoch time or None, wire length, captured bytes hex) per frame, as tshark (TZ=UTC) reads them."""
    env = dict(os.environ, TZ="UTC")
    out = subprocess.run(["tshark", "-r", str(path), "-T", "json", "-x", "-j", "frame"],
                         capture_output=True, env=env, text=True, timeout=60)
    frames = []
    for pkt in json.loads(out.stdout or "[]"):
        layers = pkt["_source"]["layers"]
        fr = layers["frame"]
        t = fr.get("frame.time_epoch")
        frames.append((int(fr["frame.number"]), float(t) if t else None, int(fr["frame.len"]), layers["frame_raw"][0]))
    return frames


def our_frames(path):
    with open_capture(path) as cap:
        frames = [(f.number, f.time, f.orig_len, f.data.hex()) for f in cap.frames()]
        return frames, cap.info


def assert_same_frames(expected, got):
    assert len(got) == len(expected)
    for (n1, t1, l1, h1), (n2, t2, l2, h2) in zip(expected, got):
        assert (n2, l2) == (n1, l1)
        assert h2 == h1, f"frame {n1}: bytes differ"
        if t1 is not None:  # tshark shows no time for blocks without one
            assert round(t2 * 1e6) == round(t1 * 1e6), f"frame {n1}: time {t2!r} != tshark {t1!r}"


def pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def ng_block(order, btype, body):
    body = pad4(body)
    n = 12 + len(body)
    return struct.pack(order + "II", btype, n) + body + struct.pack(order + "I", n)


def ng_opt(order, code, value):
    return struct.pack(order + "HH", code, len(value)) + pad4(value)


def ng_end(order):
    return struct.pack(order + "HH", 0, 0)


def ng_shb(order="<", comment=None):
    opts = ng_opt(order, 1, comment.encode()) + ng_end(order) if comment else b""
    return ng_block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1) + opts)


def ng_idb(order, linktype, snaplen=0, tsresol=None, tsoffset=None):
    opts = b""
    if tsresol is not None:
        opts += ng_opt(order, 9, bytes([tsresol]))
    if tsoffset is not None:
        opts += ng_opt(order, 14, struct.pack(order + "q", tsoffset))
    if opts:
        opts += ng_end(order)
    return ng_block(order, 1, struct.pack(order + "HHI", linktype, 0, snaplen) + opts)


def ng_epb(order, iface, ts, data, comment=None):
    opts = ng_opt(order, 1, comment.encode()) + ng_end(order) if comment else b""
    head = struct.pack(order + "IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data))
    return ng_block(order, 6, head + pad4(data) + opts)


def ng_spb(order, data):
    return ng_block(order, 3, struct.pack(order + "I", len(data)) + pad4(data))


def ng_opb(order, iface, ts, data):
    head = struct.pack(order + "HHIIII", iface, 0, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data))
    return ng_block(order, 2, head + pad4(data))


def write_pcap(path, frames, order="<", magic=0xA1B2C3D4, linktype=1, snaplen=65535):
    """frames: (seconds, fraction, bytes). Written by hand so byte order and magic can be anything (Kuznetzov's
    modified pcap, magic 0xA1B2CD34, adds ifindex, protocol and packet type: 8 more header bytes)."""
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    extra = struct.pack(order + "IHBx", 2, 0x0800, 0) if magic == 0xA1B2CD34 else b""
    for sec, frac, data in frames:
        out.append(struct.pack(order + "IIII", sec, frac, len(data), len(data)) + extra + data)
    Path(path).write_bytes(b"".join(out))
    return path


def gz(path) -> Path:
    out = Path(str(path) + ".gz")
    out.write_bytes(gzip.compress(Path(path).read_bytes()))
    return out


@pytest.fixture(scope="module")
def variants(tmp_path_factory, public_dir):
    """Every supported variant, built from the public captures with editcap or by hand."""
    if not shutil.which("editcap") or not shutil.which("tshark"):
        pytest.skip("tshark/editcap not installed")
    d = tmp_path_factory.mktemp("variants")
    drs = public_dir / "zeek-drsuapi-win7join.pcap"
    files = {}

    def editcap(fmt, src, name):
        subprocess.run(["editcap", "-F", fmt, str(src), str(d / name)], check=True, capture_output=True)
        files[name] = d / name

    editcap("nsecpcap", drs, "ns.pcap")
    editcap("netmon1", drs, "netmon1.cap")
    editcap("netmon2", drs, "netmon2.cap")
    editcap("pcapng", public_dir / "netmon20-wiki-Mixed1.cap", "from-netmon.pcapng")
    editcap("pcap", public_dir / "wiki-ShortMAPI.pcapng", "from-pcapng.pcap")

    # big-endian µs and ns pcap, by hand from the little-endian one
    raw = drs.read_bytes()
    recs, p = [], 24
    while p < len(raw):
        sec, usec, incl, _orig = struct.unpack_from("<IIII", raw, p)
        recs.append((sec, usec, raw[p + 16 : p + 16 + incl]))
        p += 16 + incl
    files["be.pcap"] = write_pcap(d / "be.pcap", recs, order=">")
    files["be-ns.pcap"] = write_pcap(d / "be-ns.pcap", [(s, u * 1000 + 7, b) for s, u, b in recs], order=">",
                                     magic=0xA1B23C4D)
    files["kuznetzov.pcap"] = write_pcap(d / "kuznetzov.pcap", recs, magic=0xA1B2CD34)
    files["raw-dlt12.pcap"] = write_pcap(d / "raw-dlt12.pcap", [(1700000000, 1, RAW_UDP)], linktype=12)

    # pcapng: two sections (LE then BE), interfaces with different link types, tsresol/tsoffset, EPB/SPB/OPB,
    # comments, a custom block (a frame for tshark 4.0) and an unknown block (skipped)
    ng = (ng_shb("<", "first section") + ng_idb("<", 1) + ng_idb("<", 101, tsresol=9, tsoffset=100)
          + ng_epb("<", 0, 1700000000123456, ETH_UDP, comment="a comment")
          + ng_block("<", 0x0BAD, b"\0\0\x7f\xffcustom-data\0")
          + ng_block("<", 0x1234ABC0, b"unknown block body")
          + ng_epb("<", 1, 1700000000123456789, RAW_UDP) + ng_opb("<", 1, 5_000_000_001, RAW_UDP)
          + ng_spb("<", ETH_UDP)
          + ng_block("<", 4, b"\0" * 4)  # name resolution block: skipped
          + ng_shb(">") + ng_idb(">", 113, tsresol=0x80 | 20)
          + ng_epb(">", 0, (1700000001 << 20) | (1 << 19), b"\0" * 16 + RAW_UDP)
          + ng_block(">", 5, b"\0" * 12))  # interface statistics: skipped
    (d / "multi.pcapng").write_bytes(ng)
    files["multi.pcapng"] = d / "multi.pcapng"
    for name in list(files):
        files[name + ".gz"] = gz(files[name])
    for name in PUBLIC_FILES:
        files["public-" + name + ".gz"] = gz_copy = d / ("public-" + name + ".gz")
        gz_copy.write_bytes(gzip.compress((public_dir / name).read_bytes()))
    return files


# -- against tshark ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PUBLIC_FILES)
def test_public_capture_matches_tshark(name, public_dir, tshark):
    path = public_dir / name
    expected = tshark_frames(path)
    got, info = our_frames(path)
    assert expected, "tshark read no frames"
    assert_same_frames(expected, got)
    assert info.frames == len(expected)
    assert info.warnings == [] and not info.truncated
    assert info.start == got[0][1] and info.end == got[-1][1]
    assert info.format == {"cap": "netmon2", "pcap": "pcap", "pcapng": "pcapng"}[name.rsplit(".", 1)[1]]


@pytest.mark.parametrize("name", SAMPLE_FILES)
def test_sample_capture_matches_tshark(name, captures_dir, tshark):
    """The project's generated samples (captures/), including the deliberately truncated one."""
    path = captures_dir / name
    expected = tshark_frames(path)
    got, info = our_frames(path)
    assert expected
    assert_same_frames(expected, got)
    assert info.truncated == bool(info.warnings)
    if info.truncated:
        assert info.warnings[0].startswith("file truncated at byte ")


VARIANTS = ["ns.pcap", "netmon1.cap", "netmon2.cap", "from-netmon.pcapng", "from-pcapng.pcap", "be.pcap",
            "be-ns.pcap", "kuznetzov.pcap", "raw-dlt12.pcap", "multi.pcapng"]


@pytest.mark.parametrize("name", VARIANTS + [v + ".gz" for v in VARIANTS if not v.startswith("netmon")])
def test_variant_matches_tshark(name, variants, tshark):
    expected = tshark_frames(variants[name])
    got, info = our_frames(variants[name])
    assert_same_frames(expected, got)
    assert info.compressed == name.endswith(".gz")
    assert info.warnings == [] and not info.truncated


def test_multi_section_pcapng_details(variants):
    with open_capture(variants["multi.pcapng"]) as cap:
        frames = list(cap.frames())
        info = cap.info
    assert [f.linktype for f in frames] == [1, LINKTYPE_PCAPNG_CUSTOM, 101, 101, 1, 113]
    assert frames[1].data == b"custom-data\0"
    assert frames[2].time == pytest.approx(1700000100.123456789, abs=1e-6)  # ns resolution + 100 s offset
    assert frames[3].time == pytest.approx(105.000000001, abs=1e-6)  # OPB
    assert frames[4].time == frames[3].time  # SPB: no timestamp, repeats the previous one
    assert frames[5].time == pytest.approx(1700000001.5, abs=1e-6)  # 2^-20 resolution, big-endian section
    assert info.linktypes == {1: 2, LINKTYPE_PCAPNG_CUSTOM: 1, 101: 2, 113: 1}


def test_dlt12_normalised_to_raw(variants):
    with open_capture(variants["raw-dlt12.pcap"]) as cap:
        assert [f.linktype for f in cap.frames()] == [101]


@pytest.mark.parametrize("name", PUBLIC_FILES + ["netmon1.cap", "netmon2.cap"])
def test_gzip_equals_uncompressed(name, variants, public_dir):
    plain = public_dir / name if name in PUBLIC_FILES else variants[name]
    packed = variants["public-" + name + ".gz"] if name in PUBLIC_FILES else variants[name + ".gz"]
    a, info_a = our_frames(plain)
    b, info_b = our_frames(packed)
    assert a == b
    assert info_b.compressed and not info_a.compressed
    assert info_a.format == info_b.format


def test_sniffing_ignores_the_extension(tmp_path, public_dir):
    renamed = tmp_path / "really-netmon.pcap"
    shutil.copy(public_dir / "netmon23-authsod-ex2-1.cap", renamed)
    other = tmp_path / "really-pcap.cap"
    shutil.copy(public_dir / "zeek-netlogon.pcapng", other)
    with open_capture(renamed) as cap:
        assert cap.info.format == "netmon2"
    with open_capture(other) as cap:
        assert cap.info.format == "pcapng"


def test_small_batches_and_progress(public_dir):
    path = public_dir / "netmon20-wiki-Mixed1.cap"
    full, _ = our_frames(path)
    calls = []
    with open_capture(path) as cap:
        batches = list(cap.batches(batch_size=10, progress=lambda done, total: calls.append((done, total))))
        frames = [(f.number, f.time, f.orig_len, f.data.hex()) for b in batches for f in b.frames()]
    assert frames == full
    assert [len(b) for b in batches] == [10] * 11 + [7]
    assert len(calls) >= len(batches) and calls[-1] == (path.stat().st_size, path.stat().st_size)
    assert all(total == path.stat().st_size for _, total in calls)


def test_gzip_windows_carry_records_over(tmp_path, monkeypatch):
    """Records spanning the decompression window boundaries are carried over intact."""
    import analyzer.ingest.reader as reader

    monkeypatch.setattr(reader, "GZIP_WINDOW", 1000)  # many windows, records cut everywhere
    rng = random.Random(7)
    frames = [(1700000000 + i, i, bytes(rng.randrange(256) for _ in range(rng.randint(14, 1500)))) for i in range(300)]
    path = write_pcap(tmp_path / "many.pcap", frames)
    ng = ng_shb() + ng_idb("<", 1) + b"".join(ng_epb("<", 0, (s * 1_000_000 + u), data) for s, u, data in frames)
    ngpath = tmp_path / "many.pcapng"
    ngpath.write_bytes(ng)
    for p in (path, ngpath):
        plain, _ = our_frames(p)
        packed, info = our_frames(gz(p))
        assert len(plain) == 300 and packed == plain and not info.warnings
        assert [bytes.fromhex(f[3]) for f in packed] == [d for _, _, d in frames]


def test_gzip_multi_member_and_zero_padding(tmp_path, public_dir):
    """``cat a.gz b.gz`` is one stream (as for gzip -d); zero padding after the last member is ignored."""
    data = (public_dir / "wiki-ShortMAPI.pcapng").read_bytes()
    path = tmp_path / "members.pcapng.gz"
    path.write_bytes(gzip.compress(data[:1000]) + gzip.compress(data[1000:]) + b"\0" * 512)
    expected, _ = our_frames(public_dir / "wiki-ShortMAPI.pcapng")
    got, info = our_frames(path)
    assert got == expected and info.warnings == [] and info.compressed


# -- bad input -----------------------------------------------------------------------------------------------------

def test_not_a_capture(tmp_path):
    text = tmp_path / "notes.pcap"
    text.write_text("this is not a capture file, just some text\n" * 10)
    with pytest.raises(CaptureError, match=r"^not a capture file \(pcap, pcapng, NetMon\)$"):
        open_capture(text)
    gzipped_text = gz(text)
    with pytest.raises(CaptureError, match="not a capture file"):
        open_capture(gzipped_text)


def test_empty_missing_and_directory(tmp_path):
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    with pytest.raises(CaptureError, match="empty file"):
        open_capture(empty)
    with pytest.raises(CaptureError, match="cannot open"):
        open_capture(tmp_path / "missing.pcap")
    with pytest.raises(CaptureError, match="directory"):
        open_capture(tmp_path)


def test_header_only_files(tmp_path):
    path = write_pcap(tmp_path / "header-only.pcap", [])
    frames, info = our_frames(path)
    assert frames == [] and info.frames == 0 and info.start is None and info.warnings == []
    cut = tmp_path / "cut-header.pcap"
    cut.write_bytes(path.read_bytes()[:10])
    with pytest.raises(CaptureError, match="file header cut short"):
        open_capture(cut)


@pytest.mark.parametrize("name", ["zeek-drsuapi-win7join.pcap", "wiki-ShortMAPI.pcapng"])
def test_truncated_matches_tshark_prefix(name, public_dir, tmp_path, tshark):
    """Cut at many offsets: every complete frame before the cut, as tshark reads it, and a warning naming the
    offset of the cut record."""
    data = (public_dir / name).read_bytes()
    full, _ = our_frames(public_dir / name)
    rng = random.Random(name)
    for cut in sorted(rng.sample(range(40, len(data) - 1), 6)) + [len(data) - 1]:
        path = tmp_path / f"cut-{cut}-{name}"
        path.write_bytes(data[:cut])
        got, info = our_frames(path)
        assert got == full[: len(got)]
        assert_same_frames(tshark_frames(path), got)
        if info.truncated:
            assert len(info.warnings) == 1
            assert info.warnings[0].startswith("file truncated at byte ")
            offset = int(info.warnings[0].split("byte ")[1].split(":")[0])
            assert offset < cut <= len(data)
            assert "last record cut (wanted " in info.warnings[0]


def test_truncation_warning_text(tmp_path):
    path = write_pcap(tmp_path / "t.pcap", [(1, 0, b"A" * 100), (2, 0, b"B" * 100)])
    data = path.read_bytes()
    path.write_bytes(data[:-30])  # second record (at 24 + 116 = 140) loses 30 of its 116 bytes
    got, info = our_frames(path)
    assert len(got) == 1 and info.truncated
    assert info.warnings == ["file truncated at byte 140: last record cut (wanted 116 bytes, 86 present)"]
    gzp = gz(path)
    got, info = our_frames(gzp)
    assert len(got) == 1 and info.truncated
    assert info.warnings == ["file truncated at byte 140 of the decompressed data: last record cut "
                             "(wanted 116 bytes, 86 present)"]


@pytest.mark.parametrize("name", ["netmon20-wiki-Mixed1.cap", "netmon23-authsod-ex3-2.cap"])
def test_truncated_netmon_reads_frames_without_the_table(name, public_dir, tmp_path):
    """NetMon writes its frame table last, so a cut file has none (tshark refuses it): frames are read in file
    order up to the cut, with a warning."""
    data = (public_dir / name).read_bytes()
    full, _ = our_frames(public_dir / name)
    table_offset = struct.unpack_from("<I", data, 24)[0]  # frames lie before the table in these files
    for cut in (table_offset // 3, table_offset // 2, table_offset - 100):
        path = tmp_path / f"cut-{cut}-{name}"
        path.write_bytes(data[:cut])
        got, info = our_frames(path)
        assert 0 < len(got) < len(full)
        assert got == full[: len(got)]
        assert info.truncated
        assert info.warnings[0].startswith(f"file truncated at byte {cut}: NetMon frame table")
        assert info.warnings[-1].startswith("file truncated at byte ")


def test_absurd_record_length_stops_with_warning(tmp_path):
    path = write_pcap(tmp_path / "absurd.pcap", [(1, 0, b"A" * 60), (2, 0, b"B" * 60), (3, 0, b"C" * 60)])
    data = bytearray(path.read_bytes())
    second = 24 + 16 + 60
    struct.pack_into("<I", data, second + 8, 0x7FFFFFF0)
    path.write_bytes(bytes(data))
    got, info = our_frames(path)
    assert len(got) == 1
    assert info.warnings == [f"damaged record at byte {second}: record length {0x7FFFFFF0} bytes exceeds the "
                             "maximum of 131070; frames after it are not read"]


def test_pcapng_bad_block_length_stops_with_warning(tmp_path):
    ng = ng_shb() + ng_idb("<", 1) + ng_epb("<", 0, 1, ETH_UDP) + ng_epb("<", 0, 2, ETH_UDP) + ng_epb("<", 0, 3, ETH_UDP)
    data = bytearray(ng)
    second = ng.index(ng_epb("<", 0, 2, ETH_UDP))
    struct.pack_into("<I", data, second + 4, 13)  # not a multiple of 4
    path = tmp_path / "bad.pcapng"
    path.write_bytes(bytes(data))
    got, info = our_frames(path)
    assert len(got) == 1
    assert info.warnings == [f"damaged record at byte {second}: block length 13 is invalid; frames after it are "
                             "not read"]


def test_corrupt_gzip_gives_frames_so_far(tmp_path, public_dir):
    src = public_dir / "netmon23-authsod-ex3-2.cap"
    editcap_pcap = tmp_path / "x.pcap"
    subprocess.run(["editcap", "-T", "ether", "-F", "pcap", str(src), str(editcap_pcap)], check=True,
                   capture_output=True)
    full, _ = our_frames(editcap_pcap)
    packed = gzip.compress(editcap_pcap.read_bytes())
    cut = tmp_path / "cut.pcap.gz"
    cut.write_bytes(packed[: len(packed) * 2 // 3])
    got, info = our_frames(cut)
    assert 0 < len(got) < len(full) and got == full[: len(got)]
    assert info.truncated and info.warnings[0].startswith("gzip stream cut short")
    flipped = bytearray(packed)
    for i in range(len(packed) // 2, len(packed) // 2 + 40):
        flipped[i] ^= 0x5A
    bad = tmp_path / "bad.pcap.gz"
    bad.write_bytes(bytes(flipped))
    got, info = our_frames(bad)  # must not raise
    assert got == full[: len(got)] or info.warnings
    assert info.warnings


@pytest.mark.parametrize("name", PUBLIC_FILES)
def test_random_corruption_never_raises_while_reading(name, public_dir, tmp_path):
    data = (public_dir / name).read_bytes()
    rng = random.Random(f"flip-{name}")
    for trial in range(40):
        damaged = bytearray(data)
        for _ in range(rng.choice((1, 4, 32))):
            pos = rng.randrange(len(damaged)) if trial % 3 else rng.randrange(min(len(damaged), 160))
            damaged[pos] = rng.randrange(256)
        if trial % 5 == 4:
            damaged = damaged[: rng.randrange(1, len(damaged))]
        payload = gzip.compress(bytes(damaged)) if trial % 7 == 6 else bytes(damaged)
        path = tmp_path / f"flip{trial}"
        path.write_bytes(payload)
        try:
            cap = open_capture(path)
        except CaptureError as exc:
            assert str(exc)
            continue
        with cap:
            n = sum(len(b) for b in cap.batches(batch_size=7))
            for b in cap.batches():
                for f in b.frames():
                    assert len(f.data) == b.caplen[f.number - b.first_number] >= 0
            assert cap.info.frames == n


# -- NetMon 2.1-2.3 built by hand: per-frame media types, metadata records, frame table order -------------------

def write_netmon2(path, minor, frames, table_order=None, start=(2024, 3, 0, 5, 13, 14, 15, 250)):
    """frames: (delta_µs, media type, bytes, FILETIME or None). Records are written in list order; the frame
    table lists them in ``table_order`` (default: the same order)."""
    trailer_extra = {1: b"", 2: b"\0" * 4, 3: None}[minor]
    body, offsets = bytearray(), []
    pos = 128
    for delta, media, data, filetime in frames:
        rec = struct.pack("<QII", delta, len(data), len(data)) + data + struct.pack("<H", media)
        if minor == 2:
            rec += trailer_extra
        elif minor == 3:
            rec += b"\0" * 4 + struct.pack("<QB", filetime or 0, 0)
        offsets.append(pos)
        body += rec
        pos += len(rec)
    order = table_order or list(range(len(frames)))
    table = b"".join(struct.pack("<I", offsets[i]) for i in order)
    year, month, day, hour, minute, sec, msec = start[0], start[1], start[3], start[4], start[5], start[6], start[7]
    header = struct.pack("<4sBBH8HII", b"GMBU", minor, 2, 1, year, month, 0, day, hour, minute, sec, msec,
                         pos, len(table))
    header += b"\0" * (128 - len(header))
    Path(path).write_bytes(header + bytes(body) + table)
    return path


@pytest.mark.parametrize("minor", [1, 2, 3])
def test_handmade_netmon2x_matches_tshark(minor, tmp_path, tshark):
    ft = 133_000_000_000_000_000  # 2022-06-12, UTC FILETIME
    frames = [
        (0, 1, ETH_UDP, ft),
        (1_500, 0xFFFD, b"\x01\x02network info", ft + 15_000),  # metadata: no frame number
        (2_000_250, 0xE000 | 101, RAW_UDP, ft + 20_002_500),  # converted pcap, raw IP
        (3_000_000, 0xFFE0, b"\0" * 40, ft + 30_000_000),  # ETW event: a frame with a private link type
        (4_000_001, 0, ETH_UDP, ft + 40_000_010),  # media 0 = Ethernet
    ]
    path = write_netmon2(tmp_path / f"handmade-2{minor}.cap", minor, frames, table_order=[0, 2, 1, 4, 3])
    expected = tshark_frames(path)
    got, info = our_frames(path)
    assert_same_frames(expected, got)
    assert len(got) == 4 and info.warnings == []
    with open_capture(path) as cap:
        linktypes = [f.linktype for f in cap.frames()]
    assert linktypes == [1, 101, 1, 0x1FFE0]  # table order: 0, 2, (1 skipped), 4, 3
    if minor < 3:
        start = calendar.timegm((2024, 3, 5, 13, 14, 15)) + 0.25  # the header's SYSTEMTIME, read as UTC
        assert got[0][1] == pytest.approx(start, abs=1e-6)
        assert got[1][1] == pytest.approx(start + 2.000250, abs=1e-6)
    else:
        assert got[0][1] == pytest.approx((ft - 116_444_736_000_000_000) / 1e7, abs=1e-6)


def test_netmon_time_zone_rule_is_utc(tmp_path, tshark):
    """NetMon 2.0-2.2 start times are local time without a zone: we read them as UTC, i.e. equal to tshark
    with TZ=UTC and different from tshark in another zone by exactly that zone's offset."""
    path = write_netmon2(tmp_path / "tz.cap", 1, [(0, 1, ETH_UDP, None)])
    ours = our_frames(path)[0][0][1]
    env = dict(os.environ, TZ="Asia/Kolkata")  # UTC+05:30, no daylight saving
    out = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "frame.time_epoch"], env=env,
                         capture_output=True, text=True, check=True)
    assert float(out.stdout.split()[0]) == pytest.approx(ours - 5.5 * 3600, abs=1e-6)
    assert tshark_frames(path)[0][1] == pytest.approx(ours, abs=1e-6)


def test_netmon_atm_pseudo_header_and_short_record(tmp_path, tshark):
    """NetMon 2.0 ATM (network type 4): the 16-byte NetMon ATM header is not part of the frame; a record too
    short to hold it ends the capture, as in tshark."""
    recs = [b"\0" * 16 + b"payload-1", b"\0" * 8, b"\0" * 16 + b"never read"]
    body, offsets, pos = bytearray(), [], 128
    for r in recs:
        rec = struct.pack("<QII", 0, len(r), len(r)) + r
        offsets.append(pos)
        body += rec
        pos += len(rec)
    table = b"".join(struct.pack("<I", o) for o in offsets)
    header = struct.pack("<4sBBH8HII", b"GMBU", 0, 2, 4, 2024, 1, 0, 1, 0, 0, 0, 0, pos, len(table))
    path = tmp_path / "atm.cap"
    path.write_bytes(header + b"\0" * (128 - len(header)) + bytes(body) + table)
    got, info = our_frames(path)
    assert_same_frames(tshark_frames(path), got)
    assert [bytes.fromhex(f[3]) for f in got] == [b"payload-1"]
    assert info.warnings == ["damaged record at byte 169: ATM record of 8 bytes is shorter than its 16-byte NetMon "
                             "ATM header; frames after it are not read"]
