# SPDX-License-Identifier: GPL-2.0-or-later
"""A small Parquet writer for tables of plain Python lists, without pyarrow or numpy.

Why it is hand-written: ``mailpush events --format parquet`` must write big.pcap's table (1,000,000 frames,
~26,000 rows x 37 columns) within a 1.0 s end-to-end budget, and ``python -c "import pyarrow, pyarrow.parquet"``
(which imports numpy) took 0.16 s fastest / 0.22 s median wall against 0.03 s for ``python -c pass`` on this
2-core machine (15 interleaved runs, 2026-12-01 05:00 UTC, load 1.1-1.3; benchmarks/results.md), a fifth of the
budget, for a table this module writes in 0.09 s of CPU (pyarrow's path: 0.16-0.18 s with numpy already loaded).
pyarrow stays the reference: the tests read every file written here with ``pyarrow.parquet`` and
``pandas.read_parquet`` and compare it with what pyarrow writes for the same table (tests/test_events_writers.py),
and the CLI falls back to it for what this writer refuses.

What it writes (the Parquet format, https://github.com/apache/parquet-format, ``parquet.thrift``):

* ``PAR1``, one row group, one column chunk per column, every column OPTIONAL (as pyarrow writes a table whose
  fields are nullable), split into DataPage v1 pages of ~1 MB (:data:`PAGE_BYTES`);
* in each page: the definition levels (1 = value, 0 = null) in the RLE/bit-packed hybrid encoding with a 4-byte
  length in front (one RLE run when the page has no null or only nulls, else one bit-packed run), then the
  non-null values PLAIN-encoded (little-endian int64 and double; 4-byte length + UTF-8 bytes; bits, LSB first);
  UNCOMPRESSED;
* the FileMetaData in the Thrift compact protocol (the ``_struct``, ``_list``, ``_binary``, ``_i32`` and
  ``_i64`` helpers below: field-id deltas, zigzag varints, lists, binary), with ``null_count`` statistics (and min/max for the integer columns), the schema with
  the STRING logical type (UTF8 converted type) on text columns and the caller's key/value metadata; then its
  4-byte length and ``PAR1``.

Column kinds (the events table's dtypes, analyzer.dissect.model.EVENT_COLUMNS):

    int64    int                      INT64
    Int64    int or None              INT64, None = null
    float64  float or None            DOUBLE, None and NaN = null (what pyarrow's Table.from_pandas makes of NaN)
    string   str or None              BYTE_ARRAY (STRING), None = null
    bool     bool                     BOOLEAN

:func:`write_table` returns False and writes nothing when a value does not fit its kind: another type (a str
subclass, an int in a float column, a bool in an integer column), an integer beyond 64 bits, a str that is not
valid UTF-8 (a lone surrogate). Every value is checked before the file is opened; the pages are then encoded and
written one at a time. Memory beyond the caller's lists: a list of each nullable column's non-null values
(references, never more than the caller's lists), a non-ASCII text column's encoded values, and one page.

This module imports no stage (the CLI uses it), so it sits beside them in the layer table.
"""

from __future__ import annotations

import json
import struct
import sys
from array import array
from bisect import bisect_right
from itertools import accumulate, compress, repeat
from operator import add, eq, is_not

PAGE_BYTES = 1 << 20  # target size of a data page's values (pyarrow's default data page size)

KINDS = ("int64", "Int64", "float64", "string", "bool")

# the Python types a column of each kind may hold (exact types: a subclass is refused)
_TYPES = {
    "int64": frozenset({int}),
    "Int64": frozenset({int, type(None)}),
    "float64": frozenset({float, type(None)}),
    "string": frozenset({str, type(None)}),
    "bool": frozenset({bool}),
}

# parquet.thrift enums
_BOOLEAN, _INT64, _DOUBLE, _BYTE_ARRAY = 0, 2, 5, 6  # Type
_REQUIRED, _OPTIONAL = 0, 1  # FieldRepetitionType
_UTF8 = 0  # ConvertedType
_PLAIN, _RLE = 0, 3  # Encoding
_UNCOMPRESSED = 0  # CompressionCodec
_DATA_PAGE = 0  # PageType
_PHYSICAL = {"int64": _INT64, "Int64": _INT64, "float64": _DOUBLE, "string": _BYTE_ARRAY, "bool": _BOOLEAN}

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_MAX_VALUE_BYTES = 2**31 - 1 - 64  # a value and its page header must fit the i32 page size
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_TO_DIGITS = bytes.maketrans(b"\0\1", b"01")
_BIG_ENDIAN = sys.byteorder == "big"

# --------------------------------------------------------------------------------------- Thrift compact protocol
# Each helper returns (compact type id, encoded value); _struct takes (field id, helper result or None) pairs in
# increasing field-id order and skips the None ones (absent optional fields).

_CT_I16, _CT_I32, _CT_I64, _CT_BINARY, _CT_LIST, _CT_STRUCT = 4, 5, 6, 8, 9, 12


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _zigzag(n: int) -> bytes:
    return _varint(2 * n if n >= 0 else -2 * n - 1)


def _i32(n: int):
    return _CT_I32, _zigzag(n)


def _i64(n: int):
    return _CT_I64, _zigzag(n)


def _binary(value: bytes | str):
    if isinstance(value, str):
        value = value.encode("utf-8")
    return _CT_BINARY, _varint(len(value)) + value


def _list(element_type: int, elements: list):
    """A list of encoded elements (payloads of ``element_type``, as the helpers above return them)."""
    n = len(elements)
    head = bytes([n << 4 | element_type]) if n < 15 else bytes([0xF0 | element_type]) + _varint(n)
    return _CT_LIST, head + b"".join(elements)


def _struct(*fields):
    out = []
    last = 0
    for field_id, item in fields:
        if item is None:
            continue
        ctype, payload = item
        delta = field_id - last
        out.append(bytes([delta << 4 | ctype]) if 0 < delta <= 15 else bytes([ctype]) + _zigzag(field_id))
        out.append(payload)
        last = field_id
    out.append(b"\0")  # STOP
    return _CT_STRUCT, b"".join(out)


# ------------------------------------------------------------------------------------------------ the writer


def write_table(path: str, columns: dict[str, list], kinds: dict[str, str], metadata: dict[str, str] | None = None,
                created_by: str = "analyzer.parquet") -> bool:
    """Write ``columns`` (name -> list of values, all of one length) as a Parquet file at ``path``, the columns
    in ``kinds`` order (name -> one of :data:`KINDS`), with ``metadata`` as the file's key/value metadata. False,
    and nothing written (the file is not even opened), when a value does not fit its column's kind. OSError
    from writing propagates."""
    names = list(kinds)
    if set(names) != set(columns):
        raise ValueError("the columns and their kinds name different columns")
    lengths = {len(columns[name]) for name in names}
    if len(lengths) > 1:
        raise ValueError("columns of different lengths")
    num_rows = lengths.pop() if lengths else 0
    checked = []
    for name in names:
        if kinds[name] not in _TYPES:
            raise ValueError(f"column {name!r}: unknown kind {kinds[name]!r}")
        column = _check(kinds[name], columns[name])
        if column is None:
            return False
        checked.append(column)  # the values that are not null, listed: at most the size of the caller's lists

    chunks = []
    with open(path, "wb") as fh:
        fh.write(b"PAR1")
        offset = 4
        for name, (valid, present, int_range, ascii_text) in zip(names, checked):
            kind = kinds[name]
            start = offset
            for rows, body in _pages(kind, num_rows, valid, present, ascii_text):
                size = sum(map(len, body))
                header = _struct(
                    (1, _i32(_DATA_PAGE)),
                    (2, _i32(size)),  # uncompressed_page_size
                    (3, _i32(size)),  # compressed_page_size
                    (5, _struct((1, _i32(rows)), (2, _i32(_PLAIN)), (3, _i32(_RLE)), (4, _i32(_RLE)))),
                )[1]
                fh.write(header)
                fh.writelines(body)
                offset += len(header) + size
            chunks.append((name, kind, start, offset - start, num_rows - len(present), int_range))
        footer = _file_metadata(names, kinds, num_rows, chunks, metadata or {}, created_by)
        fh.write(footer)
        fh.write(_U32.pack(len(footer)))
        fh.write(b"PAR1")
    return True


def _check(kind: str, values: list):
    """None when a value does not fit the column's kind, else (valid, present, (min, max) or None, ascii):
    ``valid`` one byte per row, 1 for a value and 0 for a null, or None when no row is null; ``present`` the
    values that are not null (``values`` itself when none is); the range of an integer column's values (the
    statistics); whether a text column is all ASCII. A few passes over the values, each in C."""
    types = set(map(type, values))
    if not types <= _TYPES[kind]:
        return None
    if types == {type(None)}:  # every row null: nothing more to look at
        return bytes(len(values)), [], None, True
    valid = None
    if kind == "float64":
        if type(None) in types:
            valid = bytes(v is not None and v == v for v in values)
        else:
            valid = bytes(map(eq, values, values))  # NaN != NaN: null, as pyarrow's Table.from_pandas makes it
        if not valid.count(0):
            valid = None
    elif type(None) in types:
        valid = bytes(map(is_not, values, repeat(None)))
    present = values if valid is None else list(compress(values, valid))
    if kind in ("int64", "Int64"):
        if not present:
            return valid, present, None, False
        low, high = min(present), max(present)
        if low < _INT64_MIN or high > _INT64_MAX:
            return None
        return valid, present, (low, high), False
    if kind == "string":
        text = "".join(present)
        ascii_text = text.isascii()
        if not ascii_text:
            try:
                text = text.encode("utf-8")  # fails on a lone surrogate, as encoding one of the values would
            except UnicodeEncodeError:
                return None
        if len(text) > _MAX_VALUE_BYTES and any(len(v.encode("utf-8")) > _MAX_VALUE_BYTES for v in present):
            return None
        return valid, present, None, ascii_text
    return valid, present, None, False


def _pages(kind: str, n: int, valid: bytes | None, present: list, ascii_text: bool):
    """The data pages of one column chunk of ``n`` rows, (number of rows, body as a list of bytes) each, encoded
    one at a time as they are asked for: at least one (an empty page for an empty column)."""
    if kind == "string":
        # ASCII text (the usual case): one character, one byte, and each page is built as one str encoded at
        # once; other text is encoded value by value
        encoded = present if ascii_text else list(map(str.encode, present))
        sizes = list(map(len, encoded))
        prefixes = {size: _U32.pack(size) for size in set(sizes)}  # the 4-byte length before each value
        if ascii_text:
            prefixes = {size: prefix.decode("latin-1") for size, prefix in prefixes.items()}

        def plain(a: int, b: int) -> bytes:
            parts = [b""] * (2 * (b - a))
            parts[::2] = map(prefixes.__getitem__, sizes[a:b])
            parts[1::2] = encoded[a:b]
            return "".join(parts).encode("latin-1") if ascii_text else b"".join(parts)

        # pages of ~PAGE_BYTES (each value takes 4 + its length): the index of each page's first value
        value_cuts = [0]
        if sum(sizes) + 4 * len(sizes) > PAGE_BYTES:
            ends = list(accumulate(map(add, sizes, repeat(4)), initial=0))  # ends[j]: bytes of values[:j]
            while ends[-1] - ends[value_cuts[-1]] > PAGE_BYTES:
                start = value_cuts[-1]
                cut = max(bisect_right(ends, ends[start] + PAGE_BYTES) - 1, start + 1)
                if cut >= len(sizes):
                    break
                value_cuts.append(cut)
        value_cuts.append(len(sizes))
    else:
        if kind == "bool":
            def plain(a: int, b: int) -> bytes:
                return _bits(bytes(present[a:b]))

            per_page = PAGE_BYTES * 8
        else:
            def plain(a: int, b: int) -> bytes:
                numbers = array("d" if kind == "float64" else "q", present[a:b])
                if _BIG_ENDIAN:
                    numbers.byteswap()
                return numbers.tobytes()

            per_page = PAGE_BYTES // 8
        value_cuts = list(range(0, len(present), per_page)) + [len(present)] if present else [0, 0]
    # the row where each page starts: the row of its first value (the nulls before it belong to the page before)
    if valid is None:
        row_cuts = value_cuts
    else:
        positions = list(compress(range(n), valid)) if len(value_cuts) > 2 else []
        row_cuts = [0] + [positions[j] for j in value_cuts[1:-1]] + [n]
    for a, b, ra, rb in zip(value_cuts, value_cuts[1:], row_cuts, row_cuts[1:]):
        levels = _levels(valid[ra:rb] if valid is not None else None, rb - ra)
        yield rb - ra, [_U32.pack(len(levels)), levels, plain(a, b)]


def _levels(valid: bytes | None, rows: int) -> bytes:
    """Definition levels of one page (bit width 1) in the RLE/bit-packed hybrid encoding, without the length."""
    if not rows:
        return b""
    if valid is None or not valid.count(0):
        return _varint(rows << 1) + b"\1"  # one RLE run of 1s
    if not valid.count(1):
        return _varint(rows << 1) + b"\0"  # one RLE run of 0s
    groups = (rows + 7) // 8
    return _varint(groups << 1 | 1) + _bits(valid)  # one bit-packed run, zero-padded to a multiple of 8


def _bits(flags: bytes) -> bytes:
    """Bytes of 0/1 -> bits, LSB first, zero-padded to whole bytes."""
    if not flags:
        return b""
    return int(flags[::-1].translate(_TO_DIGITS), 2).to_bytes((len(flags) + 7) // 8, "little")


def _file_metadata(names, kinds, num_rows, chunks, metadata, created_by) -> bytes:
    schema = [_struct((3, _i32(_REQUIRED)), (4, _binary("schema")), (5, _i32(len(names))))[1]]
    for name in names:
        text = kinds[name] == "string"
        schema.append(_struct(
            (1, _i32(_PHYSICAL[kinds[name]])),
            (3, _i32(_OPTIONAL)),
            (4, _binary(name)),
            (6, _i32(_UTF8) if text else None),
            (10, _struct((1, _struct())) if text else None),  # LogicalType: STRING
        )[1])
    column_chunks = []
    total = 0
    for name, kind, start, size, nulls, int_range in chunks:
        total += size
        statistics = _struct(
            (3, _i64(nulls)),
            (5, _binary(_I64.pack(int_range[1])) if int_range else None),  # max_value
            (6, _binary(_I64.pack(int_range[0])) if int_range else None),  # min_value
        )
        meta = _struct(
            (1, _i32(_PHYSICAL[kind])),
            (2, _list(_CT_I32, [_zigzag(_PLAIN), _zigzag(_RLE)])),
            (3, _list(_CT_BINARY, [_binary(name)[1]])),
            (4, _i32(_UNCOMPRESSED)),
            (5, _i64(num_rows)),
            (6, _i64(size)),  # total_uncompressed_size (page headers included)
            (7, _i64(size)),  # total_compressed_size
            (9, _i64(start)),  # data_page_offset
            (12, statistics),
        )
        column_chunks.append(_struct((2, _i64(0)), (3, meta))[1])  # file_offset: 0, as the format now asks
    row_group = _struct(
        (1, _list(_CT_STRUCT, column_chunks)),
        (2, _i64(total)),  # total_byte_size
        (3, _i64(num_rows)),
        (5, _i64(chunks[0][2] if chunks else 4)),  # file_offset: the first page
        (6, _i64(total)),  # total_compressed_size
        (7, (_CT_I16, _zigzag(0))),  # ordinal
    )[1]
    key_values = [_struct((1, _binary(k)), (2, _binary(v)))[1] for k, v in metadata.items()]
    type_defined_order = _struct((1, _struct()))[1]  # ColumnOrder: TYPE_ORDER (so readers trust min/max)
    return _struct(
        (1, _i32(2)),  # version
        (2, _list(_CT_STRUCT, schema)),
        (3, _i64(num_rows)),
        (4, _list(_CT_STRUCT, [row_group])),
        (5, _list(_CT_STRUCT, key_values) if key_values else None),
        (6, _binary(created_by)),
        (7, _list(_CT_STRUCT, [type_defined_order] * len(names))),
    )[1]


# ---------------------------------------------------------------------------------------------- pandas metadata

# what pyarrow's Table.from_pandas records for these dtypes (pandas_type, numpy_type)
_PANDAS_TYPES = {"int64": ("int64", "int64"), "Int64": ("int64", "Int64"), "float64": ("float64", "float64"),
                 "string": ("object", "string"), "bool": ("bool", "bool")}


def pandas_metadata(kinds: dict[str, str], creator: tuple[str, str], pandas_version: str | None = None) -> str:
    """The "pandas" key/value metadata that makes ``pandas.read_parquet`` restore each column's dtype (the
    kinds are pandas dtype names): the JSON pyarrow writes for a DataFrame without index, with ``creator``
    (library, version) and, when known, the pandas version."""
    document = {
        "index_columns": [],
        "column_indexes": [],
        "columns": [{"name": name, "field_name": name, "pandas_type": _PANDAS_TYPES[kind][0],
                     "numpy_type": _PANDAS_TYPES[kind][1], "metadata": None} for name, kind in kinds.items()],
        "attributes": {},
        "creator": {"library": creator[0], "version": creator[1]},
    }
    if pandas_version:
        document["pandas_version"] = pandas_version
    return json.dumps(document)
