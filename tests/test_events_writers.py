"""`mailpush events` writes CSV and parquet from plain columns, without pandas (issue 14): the output must be what
the pandas path wrote, byte for byte, on every sample and public capture and on awkward cells. Speed is measured in
benchmarks/, never here."""

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from analyzer.cli.events import csv_text, write_parquet
from analyzer.dissect import dissect_capture
from analyzer.dissect.model import EVENT_COLUMNS, Event, event_arrow_arrays, event_columns, events_to_dataframe
from analyzer.report.safe_text import neutralise_frame

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = sorted(p for p in (ROOT / "captures").iterdir() if p.suffix in (".pcap", ".pcapng", ".cap", ".gz"))
PUBLIC = Path("/work/shared/captures/public")


def pandas_table(events) -> pd.DataFrame:
    """The events table as the pandas conversion defines it (the way events_to_dataframe always built it)."""
    names = list(EVENT_COLUMNS)
    df = pd.DataFrame.from_records([tuple(getattr(e, n) for n in names) for e in events], columns=names)
    df = df.astype(EVENT_COLUMNS)
    if len(df):
        df = df.sort_values("frame", kind="stable").reset_index(drop=True)
    return df


def capture_files() -> list[Path]:
    files = list(CAPTURES)
    if PUBLIC.is_dir():
        files += sorted(p for p in PUBLIC.iterdir() if p.suffix in (".pcap", ".pcapng", ".cap", ".gz"))
    return files


@pytest.fixture(scope="module")
def captured_events():
    out = {}
    for path in capture_files():
        try:
            out[path.name] = dissect_capture(str(path))[0]
        except Exception:  # captures that are broken on purpose: the CLI reports them before any table
            continue
    assert sum(map(len, out.values())) > 1000
    return out


def awkward_events() -> list[Event]:
    """Cells a CSV writer can get wrong: quoting, line breaks, formula starts, non-ASCII, empty text, NaN time,
    frames out of order (ties keep their order)."""
    base = Event(frame=5, time=1700000000.123456, src="10.0.0.1", dst="10.0.0.2", sport=49152, dport=135,
                 kind="request", conn=0, opnum=4, call_id=7, stub_len=0, status=0x80040102)
    texts = ["=HYPERLINK(\"http://x\")", "+1", "-2", "@SUM(A1)", "\tx", "\rx", "a,b", 'say "hi"', "two\nlines",
             "", "Ünïcødé ✓", "'=already", "'", "plain"]
    events = [replace(base, frame=9 - i % 4, note=t, user_dn=t, opname=t, callback=None if i % 2 else t)
              for i, t in enumerate(texts)]
    events.append(replace(base, frame=1, time=float("nan"), sport=None, dport=None, conn=None, opnum=None,
                          encrypted=True, decrypted=True, auth_level=6))
    events.append(replace(base, frame=2, time=1e-05, stub_len=2**62, rop_ids=""))
    events.append(replace(base, frame=3, time=1.7e16, icmp_type=3, icmp_code=13))
    return events


def test_csv_is_byte_for_byte_the_pandas_csv(captured_events):
    for name, events in captured_events.items():
        columns = event_columns(events)
        assert columns is not None, name
        assert csv_text(columns) == neutralise_frame(pandas_table(events)).to_csv(index=False), name


def test_csv_of_awkward_cells_is_the_pandas_csv():
    events = awkward_events()
    expected = neutralise_frame(pandas_table(events)).to_csv(index=False)
    assert csv_text(event_columns(events)) == expected
    assert "'=HYPERLINK" in expected and '"two\nlines"' in expected  # the cases are really there


def test_csv_floats_are_written_as_pandas_writes_them():
    """csv_text writes a float as Python's repr (no numpy import), pandas as numpy's str(): the same text for
    the edge values (exponent form below 1e-4 and from 1e16 on, subnormals, -0.0, infinities) and for random bit
    patterns."""
    import random
    import struct

    rng = random.Random(14)
    values = [0.0, -0.0, 1e-4, 9.999999999999999e-05, 1e16, 9999999999999998.0, 1e15 + 0.5, 5e-324,
              2.2250738585072014e-308, 1.7976931348623157e308, float("inf"), float("-inf"), 0.1, 1 / 3,
              1700000000.123456, -2.5e-7, 1e22, 123456789.0]
    values += [struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(3000)]
    values += [rng.uniform(1.6e9, 1.8e9) for _ in range(1000)]
    base = Event(frame=1, time=0.0, src="10.0.0.1", dst="10.0.0.2", sport=49152, dport=135, kind="request")
    events = [replace(base, frame=i + 1, time=v) for i, v in enumerate(values)]
    assert csv_text(event_columns(events)) == neutralise_frame(pandas_table(events)).to_csv(index=False)


def test_parquet_is_byte_for_byte_the_pandas_parquet(captured_events, tmp_path):
    names = sorted(captured_events, key=lambda n: -len(captured_events[n]))[:6] + ["(awkward)"]
    for name in names:
        events = awkward_events() if name == "(awkward)" else captured_events[name]
        ours, theirs = tmp_path / "ours.parquet", tmp_path / "theirs.parquet"
        write_parquet(event_columns(events), str(ours))
        pandas_table(events).to_parquet(theirs, index=False)
        assert ours.read_bytes() == theirs.read_bytes(), name
        back = pd.read_parquet(ours)
        assert {c: str(t) for c, t in back.dtypes.items()} == {c: str(pd.api.types.pandas_dtype(t))
                                                                for c, t in EVENT_COLUMNS.items()}


def test_events_to_dataframe_keeps_the_documented_schema(captured_events):
    for name, events in list(captured_events.items()) + [("(awkward)", awkward_events()), ("(none)", [])]:
        got, expected = events_to_dataframe(events), pandas_table(events)
        pd.testing.assert_frame_equal(got, expected, check_exact=True, obj=name)
        assert list(got.columns) == list(EVENT_COLUMNS)


def test_cells_of_other_types_go_through_pandas():
    """A str subclass, an int in a text column or a float in an integer column: pandas decides what they become,
    so the plain columns are refused and events_to_dataframe converts as it always did."""
    base = awkward_events()[0]

    class Text(str):
        pass

    for odd in (replace(base, note=Text("-1")), replace(base, user_dn=42), replace(base, opnum=4.0),
                replace(base, encrypted=None), replace(base, time=5)):
        events = [base, odd]
        assert event_columns(events) is None
        pd.testing.assert_frame_equal(events_to_dataframe(events), pandas_table(events), check_exact=True)


def test_events_cli_profile_reports_stages_and_leaves_the_output_unchanged():
    sample = ROOT / "captures" / "three_clients.pcap"
    cmd = [sys.executable, "-m", "analyzer", "events", str(sample), "--format", "csv"]
    plain = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    profiled = subprocess.run(cmd + ["--profile"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert plain.returncode == profiled.returncode == 0, profiled.stderr
    assert profiled.stdout == plain.stdout and plain.stdout.count("\n") > 10
    stages = {line.split()[0] for line in profiled.stderr.splitlines()[1:] if line.strip()}
    assert {"ingest", "TCP", "DCE/RPC", "output", "total"} <= stages, profiled.stderr
    assert "frames/s" in profiled.stderr and "time per stage" not in plain.stderr


def test_values_arrow_cannot_hold_go_through_pandas():
    """Text that is not valid Unicode (a lone surrogate) or an integer beyond 64 bits: no arrow arrays, and the
    table conversion does what the pandas conversion does with them."""
    base = awkward_events()[0]
    for odd in (replace(base, note="bad \udcff byte"), replace(base, stub_len=2**64)):
        events = [base, odd]
        assert event_columns(events) is not None and event_arrow_arrays(event_columns(events)) is None
        try:
            expected = pandas_table(events)
        except Exception as exc:
            with pytest.raises(type(exc)):
                events_to_dataframe(events)
        else:
            pd.testing.assert_frame_equal(events_to_dataframe(events), expected, check_exact=True)
