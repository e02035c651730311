"""`mailpush events` writes CSV and parquet from plain columns, without pandas (issue 14). The CSV must be what the
pandas path wrote, byte for byte, on every sample and public capture and on awkward cells. The parquet file is
written by the hand-written analyzer.parquet (without pyarrow): pandas and pyarrow must read back from it what
they read from the file pandas/pyarrow write for the same table (same values, nulls, dtypes and schema), and odd
values, big tables and refused values are checked on the writer itself. Speed is measured in benchmarks/, never
here."""

import subprocess
import sys
from array import array
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

import analyzer.parquet
from analyzer.cli.events import csv_text, write_parquet, write_parquet_pyarrow
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


DOCUMENTED_DTYPES = {c: str(pd.api.types.pandas_dtype(t)) for c, t in EVENT_COLUMNS.items()}


def assert_same_parquet_content(ours: Path, theirs: Path, name: str) -> None:
    """Our file reads back, in pandas and in pyarrow, as the reference file does; the schema is the reference's."""
    import pyarrow.parquet as pq

    got, expected = pd.read_parquet(ours), pd.read_parquet(theirs)
    pd.testing.assert_frame_equal(got, expected, check_exact=True, obj=name)
    assert {c: str(t) for c, t in got.dtypes.items()} == DOCUMENTED_DTYPES, name

    mine, reference = pq.ParquetFile(ours), pq.ParquetFile(theirs)
    assert mine.metadata.num_rows == reference.metadata.num_rows == len(expected), name
    assert mine.metadata.num_row_groups == 1 and mine.metadata.num_columns == len(EVENT_COLUMNS), name
    assert mine.schema.equals(reference.schema), (name, mine.schema, reference.schema)  # types, logical types
    for i, (column, kind) in enumerate(EVENT_COLUMNS.items()):
        leaf = mine.schema.column(i)
        assert leaf.name == column and leaf.max_repetition_level == 0, name
        assert leaf.max_definition_level == 1, name  # OPTIONAL, as pyarrow writes every field of a table
        assert leaf.physical_type == {"int64": "INT64", "Int64": "INT64", "float64": "DOUBLE", "string": "BYTE_ARRAY",
                                      "bool": "BOOLEAN"}[kind], (name, column)
        assert str(leaf.logical_type) == ("String" if kind == "string" else "None"), (name, column)
        chunk = mine.metadata.row_group(0).column(i)
        assert chunk.compression == "GZIP" and chunk.num_values == len(expected), (name, column)
    assert_chunks_laid_out(ours, name)

    # pyarrow reads text as string (our file has no ARROW:schema key asking for large_string): same values and
    # nulls once cast to the reference's types
    table, reference_table = pq.read_table(ours), pq.read_table(theirs)
    assert table.schema.metadata.keys() == {b"pandas"}, name
    assert table.column_names == reference_table.column_names, name
    target = reference_table.schema.remove_metadata()
    assert table.replace_schema_metadata(None).cast(target).equals(reference_table.replace_schema_metadata(None)), name
    for column in EVENT_COLUMNS:
        assert table.column(column).null_count == reference_table.column(column).null_count, (name, column)


def assert_chunks_laid_out(path: Path, name: str = "") -> None:
    """The column chunks follow each other from byte 4 to the footer, each a dictionary page (when the encodings
    name RLE_DICTIONARY) then its data pages, as the footer's offsets and sizes say; and the first data page's
    header says what the footer says (decoded by read_page_headers)."""
    import pyarrow.parquet as pq

    data = path.read_bytes()
    meta = pq.ParquetFile(path).metadata
    offset = 4
    for i in range(meta.num_columns):
        chunk = meta.row_group(0).column(i)
        column = (name, chunk.path_in_schema)
        dictionary = "RLE_DICTIONARY" in chunk.encodings
        assert set(chunk.encodings) == ({"PLAIN", "RLE", "RLE_DICTIONARY"} if dictionary else {"PLAIN", "RLE"}), column
        assert chunk.has_dictionary_page == dictionary, column
        if dictionary:
            assert chunk.dictionary_page_offset == offset < chunk.data_page_offset, column
        else:
            assert chunk.data_page_offset == offset, column
        pages = read_page_headers(data, offset, offset + chunk.total_compressed_size, chunk.compression == "GZIP")
        assert [p["type"] for p in pages[:1 + dictionary]] == ["DICTIONARY_PAGE"] * dictionary + ["DATA_PAGE"], column
        assert pages[dictionary]["offset"] == chunk.data_page_offset, column
        assert {p["encoding"] for p in pages[dictionary:]} == {"RLE_DICTIONARY" if dictionary else "PLAIN"}, column
        assert sum(p["rows"] for p in pages[dictionary:]) == chunk.num_values, column
        offset += chunk.total_compressed_size
    assert offset == len(data) - 8 - int.from_bytes(data[-8:-4], "little"), name  # then the footer


def read_page_headers(data: bytes, start: int, end: int, gzipped: bool) -> list[dict]:
    """The page headers of the column chunk data[start:end] (the fields this writer uses, Thrift compact), each
    with its offset and its body, decompressed when the codec is GZIP."""
    import gzip

    encodings = {0: "PLAIN", 3: "RLE", 8: "RLE_DICTIONARY"}
    types = {0: "DATA_PAGE", 2: "DICTIONARY_PAGE"}

    def varint(pos):
        shift = value = 0
        while True:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value, pos

    def struct(pos):
        fields, last = {}, 0
        while data[pos]:
            head = data[pos]
            pos += 1
            last += head >> 4
            kind = head & 0x0F
            if kind == 5:  # i32
                value, pos = varint(pos)
                fields[last] = value >> 1 ^ -(value & 1)
            elif kind == 12:
                fields[last], pos = struct(pos)
            else:
                assert kind in (1, 2), kind  # a bool (is_sorted)
                fields[last] = kind == 1
        return fields, pos + 1

    pages = []
    while start < end:
        header, body = struct(start)
        size = header[3]
        payload = data[body:body + size]
        if gzipped:
            payload = gzip.decompress(payload)
        assert len(payload) == header[2]
        inner = header.get(5) or header[7]
        pages.append({"offset": start, "type": types[header[1]], "encoding": encodings[inner[2]],
                      "rows": inner[1], "body": payload})
        start = body + size
    assert start == end
    return pages


def test_parquet_reads_back_as_the_pandas_parquet(captured_events, tmp_path):
    """Every sample and public capture's events, the awkward events and an empty table: our file and the one
    pandas (through pyarrow) writes for the same table read back alike."""
    tables = list(captured_events.items()) + [("(awkward)", awkward_events()), ("(none)", [])]
    for name, events in tables:
        ours, theirs = tmp_path / "ours.parquet", tmp_path / "theirs.parquet"
        assert write_parquet(event_columns(events), str(ours)), name
        pandas_table(events).to_parquet(theirs, index=False)
        assert ours.read_bytes()[:4] == ours.read_bytes()[-4:] == b"PAR1"
        assert_same_parquet_content(ours, theirs, name)


def test_parquet_pyarrow_fallback_still_writes_the_pandas_parquet(captured_events, tmp_path):
    """What our writer would refuse goes to pyarrow (write_parquet_pyarrow): still the pandas file byte for byte."""
    name = max(captured_events, key=lambda n: len(captured_events[n]))
    for label, events in ((name, captured_events[name]), ("(awkward)", awkward_events())):
        ours, theirs = tmp_path / "ours.parquet", tmp_path / "theirs.parquet"
        assert write_parquet_pyarrow(event_columns(events), str(ours))
        pandas_table(events).to_parquet(theirs, index=False)
        assert ours.read_bytes() == theirs.read_bytes(), label


ODD_KINDS = {"i": "int64", "n": "Int64", "f": "float64", "s": "string", "b": "bool", "all_null_n": "Int64",
             "all_null_s": "string", "all_null_f": "float64", "full_n": "Int64", "full_s": "string"}


def odd_columns() -> dict[str, list]:
    nan, inf = float("nan"), float("inf")
    return {
        "i": [0, -1, 2**63 - 1, -(2**63), 1, -(2**31), 2**31, 7, -7, 123456789012],
        "n": [None, -(2**63), 2**63 - 1, None, -1, 0, None, 2**53 + 1, None, -(2**53) - 1],
        "f": [nan, -inf, inf, -0.0, 0.0, 5e-324, 1.7976931348623157e308, None, -1.5, 1700000000.123456],
        "s": ["", None, "Ünïcødé ✓", "𝄞 outside the BMP", "", "a\x00b", "plain", None, "x" * 300, "\r\n"],
        "b": [True, False, False, True, True, True, False, True, False, True],
        "all_null_n": [None] * 10,
        "all_null_s": [None] * 10,
        "all_null_f": [nan] * 10,
        "full_n": list(range(-5, 5)),
        "full_s": ["a", "bb", "", "ccc", "é", "d", "e", "f", "g", "h"],
    }


def read_back_lists(path: Path) -> dict[str, list]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pydict()


def expected_lists(columns: dict[str, list], kinds: dict[str, str]) -> dict[str, list]:
    """What a reader gets back: NaN and None in a float column as null."""
    return {name: [None if kinds[name] == "float64" and (v is None or v != v) else v for v in values]
            for name, values in columns.items()}


def test_parquet_writer_round_trips_odd_values(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = odd_columns()
    ours = tmp_path / "odd.parquet"
    metadata = {"pandas": analyzer.parquet.pandas_metadata(ODD_KINDS, ("mailpush", "test"), pd.__version__)}
    assert analyzer.parquet.write_table(str(ours), columns, ODD_KINDS, metadata)
    got = read_back_lists(ours)
    expected = expected_lists(columns, ODD_KINDS)
    assert list(got) == list(ODD_KINDS)
    for name in ODD_KINDS:
        assert [repr(v) for v in got[name]] == [repr(v) for v in expected[name]], name  # -0.0 and 0.0 differ
    # the same table written by pyarrow reads back the same way, in pyarrow and in pandas
    arrow_types = {"int64": pa.int64(), "Int64": pa.int64(), "float64": pa.float64(), "string": pa.large_string(),
                   "bool": pa.bool_()}
    reference = tmp_path / "reference.parquet"
    table = pa.table({name: pa.array(expected[name], type=arrow_types[kind]) for name, kind in ODD_KINDS.items()})
    pq.write_table(table.replace_schema_metadata({"pandas": metadata["pandas"]}), reference)
    mine = pq.read_table(ours).replace_schema_metadata(None)
    assert mine.cast(table.schema).equals(table)
    frame, reference_frame = pd.read_parquet(ours), pd.read_parquet(reference)
    pd.testing.assert_frame_equal(frame, reference_frame, check_exact=True)
    assert {c: str(t) for c, t in frame.dtypes.items()} == {c: str(pd.api.types.pandas_dtype(t))
                                                             for c, t in ODD_KINDS.items()}
    # statistics: null counts everywhere, min and max of the integer columns
    meta = pq.ParquetFile(ours).metadata.row_group(0)
    stats = {meta.column(i).path_in_schema: meta.column(i).statistics for i in range(meta.num_columns)}
    assert stats["i"].min == -(2**63) and stats["i"].max == 2**63 - 1 and stats["i"].null_count == 0
    assert stats["n"].null_count == 4 and stats["all_null_s"].null_count == 10 and stats["f"].null_count == 2
    assert not stats["all_null_n"].has_min_max


def test_parquet_writer_large_table_in_pages(tmp_path, monkeypatch):
    """300,000 rows with long text: several ~1 MB pages per column; and tiny pages (every kind, nulls at the page
    edges) read back the same."""
    import pyarrow.parquet as pq

    n = 300_000
    kinds = {"i": "int64", "n": "Int64", "f": "float64", "s": "string", "u": "string", "b": "bool"}
    columns = {
        "i": list(range(-n // 2, n - n // 2)),
        "n": [None if k % 7 == 0 else k * 1_000_003 for k in range(n)],
        "f": [float("nan") if k % 11 == 0 else k / 3 for k in range(n)],
        "s": [None if k % 5 == 0 else f"row {k} " + "x" * (k % 200) for k in range(n)],
        "u": [None if k % 3 == 0 else "é" * (k % 50) + str(k) for k in range(n)],
        "b": [k % 3 == 0 for k in range(n)],
    }
    path = tmp_path / "large.parquet"
    assert analyzer.parquet.write_table(str(path), columns, kinds)
    meta = pq.ParquetFile(path).metadata
    assert meta.num_rows == n and meta.num_row_groups == 1
    assert meta.row_group(0).column(3).total_uncompressed_size > 20 * analyzer.parquet.PAGE_BYTES
    assert read_back_lists(path) == expected_lists(columns, kinds)

    monkeypatch.setattr(analyzer.parquet, "PAGE_BYTES", 40)  # 5 numbers or a few strings a page
    small = {name: values[:997] for name, values in columns.items()}
    small["all_null"] = [None] * 997
    path = tmp_path / "small-pages.parquet"
    assert analyzer.parquet.write_table(str(path), small, {**kinds, "all_null": "string"})
    assert read_back_lists(path) == expected_lists(small, {**kinds, "all_null": "string"})


def dictionary_columns(n: int) -> tuple[dict[str, list], dict[str, str]]:
    """Columns where a dictionary pays and where it does not, with the kinds."""
    kinds = {"few_s": "string", "one_s": "string", "one_n": "Int64", "null_s": "string", "null_n": "Int64",
             "distinct_s": "string", "distinct_i": "int64", "ints_256": "int64", "ints_257": "int64",
             "sparse_n": "Int64", "f": "float64", "b": "bool"}
    few = ["request", "response", "bind", None, "Ünïcødé ✓", "response"]
    columns = {
        "few_s": [few[k % len(few)] for k in range(n)],
        "one_s": ["the same"] * n,
        "one_n": [-(2**63)] * n,
        "null_s": [None] * n,
        "null_n": [None] * n,
        "distinct_s": [f"row {k}" for k in range(n)],
        "distinct_i": list(range(n)),
        "ints_256": [(k * 7919) % 256 - 128 for k in range(n)],
        "ints_257": [k % 257 for k in range(n)],
        "sparse_n": [None if k % 10 else 2**62 + k % 3 for k in range(n)],
        "f": [(k % 3) / 2 for k in range(n)],
        "b": [k % 4 == 0 for k in range(n)],
    }
    return columns, kinds


def dictionary_encoded(path: Path) -> dict[str, bool]:
    """Column name -> whether its chunk is dictionary-encoded, from the footer's encodings (pyarrow)."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata.row_group(0)
    return {meta.column(i).path_in_schema: "RLE_DICTIONARY" in meta.column(i).encodings
            for i in range(meta.num_columns)}


def column_pages(path: Path, name: str) -> list[dict]:
    """The pages of column ``name`` (read_page_headers)."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata.row_group(0)
    chunk = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema == name)
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    return read_page_headers(path.read_bytes(), start, start + chunk.total_compressed_size,
                             chunk.compression == "GZIP")


def data_pages(path: Path, name: str) -> list[dict]:
    return [page for page in column_pages(path, name) if page["type"] == "DATA_PAGE"]


def dictionary_page(path: Path, name: str) -> dict:
    [page] = [page for page in column_pages(path, name) if page["type"] == "DICTIONARY_PAGE"]
    return page


def page_values(page: dict) -> bytes:
    """A data page's values: after the definition levels and their length."""
    body = page["body"]
    return body[4 + int.from_bytes(body[:4], "little"):]


def single_index_run(rows: int) -> bytes:
    """The values of a data page of a column of one distinct value: bit width 1, one RLE run of index 0."""
    return b"\x01" + analyzer.parquet._varint(rows << 1) + b"\x00"


def index_bit_width(page: dict) -> int:
    """The bit width byte in front of an RLE_DICTIONARY data page's indices."""
    return page_values(page)[0]


@pytest.mark.parametrize("compress", [True, False])
def test_parquet_dictionary_where_it_pays(tmp_path, compress):
    """Text and integer columns whose values repeat get a dictionary page and RLE_DICTIONARY data pages (one value:
    one RLE run); all-null columns, columns of distinct values, integer columns of more than 256 values, doubles
    and booleans stay PLAIN; pyarrow and pandas read back the same values either way."""
    import pyarrow.parquet as pq

    columns, kinds = dictionary_columns(5000)
    path = tmp_path / "dictionary.parquet"
    metadata = {"pandas": analyzer.parquet.pandas_metadata(kinds, ("mailpush", "test"), pd.__version__)}
    assert analyzer.parquet.write_table(str(path), columns, kinds, metadata, compress=compress)
    assert read_back_lists(path) == expected_lists(columns, kinds)
    assert dictionary_encoded(path) == {
        "few_s": True, "one_s": True, "one_n": True, "null_s": False, "null_n": False, "distinct_s": False,
        "distinct_i": False, "ints_256": True, "ints_257": False, "sparse_n": True, "f": False, "b": False}
    assert_chunks_laid_out(path)
    meta = pq.ParquetFile(path).metadata.row_group(0)
    assert {meta.column(i).compression for i in range(meta.num_columns)} == {"GZIP" if compress else "UNCOMPRESSED"}
    # the dictionary holds the distinct values in order of first appearance
    table = pq.read_table(path, read_dictionary=["few_s", "one_s"])
    assert table.column("few_s").chunk(0).dictionary.to_pylist() == ["request", "response", "bind", "Ünïcødé ✓"]
    assert table.column("one_s").chunk(0).dictionary.to_pylist() == ["the same"]
    dictionary = array("q", dictionary_page(path, "ints_256")["body"])
    assert dictionary.tolist() == list(dict.fromkeys(columns["ints_256"]))
    assert dictionary_page(path, "sparse_n")["rows"] == 3  # its number of values
    # as few bits as the dictionary needs (at least 1); a single value: one RLE run of index 0
    assert [index_bit_width(p) for p in data_pages(path, "few_s")] == [2]
    assert [index_bit_width(p) for p in data_pages(path, "ints_256")] == [8]
    assert [page_values(p) for p in data_pages(path, "one_n")] == [single_index_run(5000)]
    # statistics from the dictionary's values
    stats = {meta.column(i).path_in_schema: meta.column(i).statistics for i in range(meta.num_columns)}
    assert (stats["ints_256"].min, stats["ints_256"].max, stats["ints_256"].null_count) == (-128, 127, 0)
    assert (stats["sparse_n"].min, stats["sparse_n"].max, stats["sparse_n"].null_count) == (2**62, 2**62 + 2, 4500)
    assert (stats["one_n"].min, stats["one_n"].max) == (-(2**63), -(2**63))
    assert stats["null_n"].null_count == 5000 and not stats["null_n"].has_min_max
    frame = pd.read_parquet(path)
    assert {c: str(t) for c, t in frame.dtypes.items()} == {c: str(pd.api.types.pandas_dtype(t))
                                                             for c, t in kinds.items()}
    assert frame["few_s"].tolist()[:6] == ["request", "response", "bind", pd.NA, "Ünïcødé ✓", "response"]


def test_parquet_dictionary_indices_split_at_page_edges(tmp_path, monkeypatch):
    """Tiny pages (PAGE_BYTES 40: 160 two-bit or 40 eight-bit indices a page), nulls at the page edges: every data
    page RLE_DICTIONARY with its own bit width byte, and the values read back in order."""
    monkeypatch.setattr(analyzer.parquet, "PAGE_BYTES", 40)
    columns, kinds = dictionary_columns(997)
    path = tmp_path / "small-pages.parquet"
    assert analyzer.parquet.write_table(str(path), columns, kinds)
    assert read_back_lists(path) == expected_lists(columns, kinds)
    assert_chunks_laid_out(path)
    encoded = dictionary_encoded(path)
    assert encoded["few_s"] and encoded["ints_256"] and encoded["sparse_n"] and encoded["one_s"]
    few = data_pages(path, "few_s")
    assert len(few) == 6 and {index_bit_width(p) for p in few} == {2}  # 831 values, 160 a page
    assert [p["rows"] for p in few][:5] == [192, 192, 192, 192, 192]  # a page's nulls go with the values before
    ints = data_pages(path, "ints_256")
    assert len(ints) == 25 and {index_bit_width(p) for p in ints} == {8}  # 997 values, 40 a page
    one = data_pages(path, "one_s")  # pages counted as 1 bit an index (320 a page), each a single RLE run
    assert [p["rows"] for p in one] == [320, 320, 320, 37]
    assert [page_values(p) for p in one] == [single_index_run(rows) for rows in (320, 320, 320, 37)]


def test_parquet_dictionary_of_more_than_65536_values(tmp_path):
    """70,000 distinct strings, each twice in a shuffled order: 17-bit indices."""
    import random

    values = [f"v{k}" for k in range(70_000)] * 2
    random.Random(1).shuffle(values)
    values[5] = None
    kinds = {"s": "string"}
    path = tmp_path / "wide.parquet"
    assert analyzer.parquet.write_table(str(path), {"s": values}, kinds)
    assert dictionary_encoded(path) == {"s": True}
    assert [index_bit_width(p) for p in data_pages(path, "s")] == [17]
    assert read_back_lists(path) == {"s": values}
    assert_chunks_laid_out(path)


def test_parquet_dictionary_falls_back_to_plain_past_a_megabyte(tmp_path, monkeypatch):
    """20,000 distinct 60-byte strings, each three times: a dictionary would save two thirds of the column, but
    its page would take 1.28 MB, past DICTIONARY_BYTES (1 MB): PLAIN. The same column with the bound raised, or
    a column of 6,000 of these values (384 KB of dictionary): a dictionary."""
    import random

    values = [f"{k:060d}" for k in range(20_000)] * 3
    random.Random(2).shuffle(values)
    path = tmp_path / "fallback.parquet"
    tenth = values[:6000] * 10
    assert analyzer.parquet.write_table(str(path), {"s": values, "t": tenth}, {"s": "string", "t": "string"})
    assert dictionary_encoded(path) == {"s": False, "t": True}
    assert read_back_lists(path) == {"s": values, "t": tenth}
    monkeypatch.setattr(analyzer.parquet, "DICTIONARY_BYTES", 2 << 20)
    assert analyzer.parquet.write_table(str(path), {"s": values}, {"s": "string"})
    assert dictionary_encoded(path) == {"s": True}
    assert read_back_lists(path) == {"s": values}


def test_parquet_pages_compress_with_zlib_without_isal(tmp_path, monkeypatch):
    """Without isal, zlib's deflate writes the GZIP pages: the same pages once decompressed."""
    columns, kinds = dictionary_columns(3000)
    with_isal, with_zlib = tmp_path / "isal.parquet", tmp_path / "zlib.parquet"
    assert analyzer.parquet.write_table(str(with_isal), columns, kinds)
    monkeypatch.setitem(sys.modules, "isal.isal_zlib", None)  # import fails
    assert analyzer.parquet.write_table(str(with_zlib), columns, kinds)
    assert read_back_lists(with_zlib) == expected_lists(columns, kinds)
    for name in kinds:
        assert [p["body"] for p in data_pages(with_zlib, name)] == [p["body"] for p in data_pages(with_isal, name)]


def test_parquet_writer_refuses_what_does_not_fit_and_writes_nothing(tmp_path):
    """An integer beyond 64 bits, text that is not valid Unicode, a value of another type: False, and the file is
    neither created nor touched."""

    class Text(str):
        pass

    base = odd_columns()
    refused = [("i", 2**63), ("i", -(2**63) - 1), ("n", 2**64), ("s", "bad \udcff byte"), ("s", Text("x")),
               ("i", True), ("i", 1.0), ("n", "1"), ("f", 1), ("f", True), ("b", 1), ("b", None), ("s", b"bytes"),
               ("full_s", 5)]
    path = tmp_path / "refused.parquet"
    for name, value in refused:
        columns = {k: list(v) for k, v in base.items()}
        columns[name][3] = value
        assert analyzer.parquet.write_table(str(path), columns, ODD_KINDS) is False, (name, value)
        assert not path.exists(), (name, value)
    path.write_bytes(b"keep me")
    columns = {k: list(v) for k, v in base.items()}
    columns["s"][-1] = "\ud800"
    assert analyzer.parquet.write_table(str(path), columns, ODD_KINDS) is False
    assert path.read_bytes() == b"keep me"
    # values checked through the dictionary (its distinct values): still refused
    for kind, values in (("string", ["a", "b"] * 1500 + ["bad \udcff byte"]), ("Int64", [5, None] * 1500 + [2**64]),
                         ("int64", [1] * 3000 + [-(2**63) - 1]), ("Int64", [1] * 3000 + [True])):
        assert analyzer.parquet.write_table(str(path), {"c": values}, {"c": kind}) is False, values[-1]
        assert path.read_bytes() == b"keep me"
    # the events: neither our writer nor pyarrow takes a lone surrogate; the CLI then goes through pandas
    events = [replace(awkward_events()[0], note="bad \udcff byte")]
    assert write_parquet(event_columns(events), str(path)) is False and path.read_bytes() == b"keep me"


def test_events_parquet_cli_imports_neither_pyarrow_nor_pandas(tmp_path):
    sample = ROOT / "captures" / "three_clients.pcap"
    out = tmp_path / "events.parquet"
    code = ("import sys\nfrom analyzer.cli import main\nstatus = main(sys.argv[1:])\n"
            "print(status, sorted(m for m in ('pyarrow', 'pandas') if m in sys.modules), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, "events", str(sample), "--format", "parquet", "-o", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "0 []", proc.stderr
    events = dissect_capture(str(sample))[0]
    pd.testing.assert_frame_equal(pd.read_parquet(out), pandas_table(events), check_exact=True)
    import json

    import pyarrow.parquet as pq

    from analyzer import __version__

    metadata = pq.ParquetFile(out).metadata
    assert metadata.created_by == f"mailpush version {__version__}"
    pandas_metadata = json.loads(metadata.metadata[b"pandas"])
    assert pandas_metadata["creator"] == {"library": "mailpush", "version": __version__}
    assert pandas_metadata["pandas_version"] == pd.__version__  # found without importing pandas


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
