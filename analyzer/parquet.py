# SPDX-License-Identifier: GPL-2.0-or-later
"""A small Parquet writer for tables of plain Python lists, without pyarrow or numpy.

Why it is hand-written: ``mailpush events --format parquet`` must write big.pcap's table (1,000,000 frames,
~26,000 rows x 37 columns) within a 1.0 s end-to-end budget, and ``python -c "import pyarrow, pyarrow.parquet"``
(which imports numpy) took 0.16 s fastest / 0.22 s median wall against 0.03 s for ``python -c pass`` on this
2-core machine (15 interleaved runs, 2026-12-01 05:00 UTC, load 1.1-1.3; benchmarks/results.md), a fifth of the
budget, for a table this module writes in 0.07-0.08 s of CPU (pyarrow's path: 0.16-0.18 s with numpy already
loaded), 0.40 MB of dictionaries and GZIP pages (pyarrow's: 0.77 MB; benchmarks/results.md, 2026-12-01 06:27 UTC).
pyarrow stays the reference: the tests read every file written here with ``pyarrow.parquet`` and
``pandas.read_parquet`` and compare it with what pyarrow writes for the same table (tests/test_events_writers.py),
and the CLI falls back to it for what this writer refuses.

What it writes (the Parquet format, https://github.com/apache/parquet-format, ``parquet.thrift``):

* ``PAR1``, one row group, one column chunk per column, every column OPTIONAL (as pyarrow writes a table whose
  fields are nullable);
* for a column whose values repeat, a dictionary page first: the distinct values, PLAIN, in order of first
  appearance (see "Dictionary or PLAIN" below);
* DataPage v1 pages of ~1 MB (:data:`PAGE_BYTES`) before compression, each: the definition levels (1 = value,
  0 = null) in the RLE/bit-packed hybrid encoding with a 4-byte length in front (one RLE run when the page has no
  null or only nulls, else one bit-packed run), then the non-null values, either RLE_DICTIONARY (a byte with the
  bit width, then the indices into the dictionary in the same hybrid encoding: one RLE run when the column has a
  single distinct value, else one bit-packed run, as few bits as the dictionary needs, at least 1 as pyarrow
  writes it) or PLAIN (little-endian int64 and double; 4-byte length + UTF-8 bytes; bits, LSB first);
* every page (dictionary and data) GZIP-compressed at level 1 (isal's deflate, which the ingest stage has
  already loaded, else zlib's; ``compress=False`` writes UNCOMPRESSED);
* the FileMetaData in the Thrift compact protocol (the ``_struct``, ``_list``, ``_binary``, ``_i32`` and
  ``_i64`` helpers below: field-id deltas, zigzag varints, lists, binary): per column chunk the encodings, the
  offsets of the dictionary page and of the first data page, the sizes before and after compression, the
  pages of each encoding (``encoding_stats``) and ``null_count`` statistics (with min/max for the integer
  columns); the schema with the STRING logical type (UTF8 converted type) on text columns and the caller's
  key/value metadata; then its 4-byte length and ``PAR1``.

Dictionary or PLAIN, column by column (all the values are at hand, so unlike pyarrow the choice is made once,
before the first page, and a column never switches encoding halfway):

* text and integer columns get a dictionary when its page (the distinct values, PLAIN) stays within
  :data:`DICTIONARY_BYTES` (1 MB, pyarrow's and parquet-mr's bound: a reader holds the whole dictionary before the
  first row) and that page plus the indices is smaller than the PLAIN values (so a column of mostly distinct
  values stays PLAIN, where pyarrow's dictionary makes it larger: its frame column, 15-bit indices and a
  dictionary as big as the values);
* an integer column only up to :data:`INT_DICTIONARY_ENTRIES` (256) distinct values (8-bit indices): past
  that, on big.pcap's events, the compressed PLAIN column was about as small (sport, 2,441 values: 37 KB against
  33 KB with a dictionary; conn, 2,000: 31 KB against 38 KB; the file 0.6% larger) and the wide indices cost
  time (the whole write: ~750 M instructions with the bound, ~808 M without; 803 M before dictionaries);
* booleans (one bit PLAIN) and doubles stay PLAIN (the events' one double column, time, has a distinct value
  per row);
* the distinct values are only looked for when a sample of ~1,024 values spread over the column (all of a
  column up to 2,047 values) has a repeat, so a column of distinct values (frame, request_frame) costs no
  hashing of every value. A column of fewer than 1,024 distinct values always shows a repeat in the sample (and
  an integer column may not have more than 256); a text column of more whose repeats the sample misses (each
  value twice in a row, say) is written PLAIN.

On big.pcap's events (25,977 rows) the file is 398 KB instead of 5.3 MB (PLAIN, uncompressed), and 1.46 MB
with ``compress=False``; pyarrow writes 0.77 MB (dictionary, snappy).

Column kinds (the events table's dtypes, analyzer.dissect.model.EVENT_COLUMNS):

    int64    int                      INT64
    Int64    int or None              INT64, None = null
    float64  float or None            DOUBLE, None and NaN = null (what pyarrow's Table.from_pandas makes of NaN)
    string   str or None              BYTE_ARRAY (STRING), None = null
    bool     bool                     BOOLEAN

:func:`write_table` returns False and writes nothing when a value does not fit its kind: another type (a str
subclass, an int in a float column, a bool in an integer column), an integer beyond 64 bits, a str that is not
valid UTF-8 (a lone surrogate). Every value is checked before the file is opened; the pages are then encoded,
compressed and written one at a time. Memory beyond the caller's lists: a list of each nullable column's non-null
values (references, never more than the caller's lists), each dictionary (its distinct values, references), a
non-ASCII PLAIN text column's encoded values, and one page before and after compression.

This module imports no stage (the CLI uses it), so it sits beside them in the layer table.
"""

from __future__ import annotations

import json
import struct
import sys
from array import array
from bisect import bisect_right
from functools import partial
from itertools import accumulate, compress, repeat
from operator import add, eq, is_, is_not

PAGE_BYTES = 1 << 20  # target size of a data page's values (pyarrow's default data page size)
DICTIONARY_BYTES = 1 << 20  # largest dictionary page (pyarrow's dictionary_pagesize_limit); else PLAIN
INT_DICTIONARY_ENTRIES = 256  # most distinct values of an integer column with a dictionary (8-bit indices)

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
_PLAIN, _RLE, _RLE_DICTIONARY = 0, 3, 8  # Encoding
_UNCOMPRESSED, _GZIP = 0, 2  # CompressionCodec
_DATA_PAGE, _DICTIONARY_PAGE = 0, 2  # PageType
_PHYSICAL = {"int64": _INT64, "Int64": _INT64, "float64": _DOUBLE, "string": _BYTE_ARRAY, "bool": _BOOLEAN}

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# a value's page, compressed (deflate's stored blocks add 5 bytes per 64 KB: 160 KB at this size), with its
# header, must fit the i32 page size
_MAX_VALUE_BYTES = 2**31 - 1 - 2**20
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
                created_by: str = "analyzer.parquet", compress: bool = True) -> bool:
    """Write ``columns`` (name -> list of values, all of one length) as a Parquet file at ``path``, the columns
    in ``kinds`` order (name -> one of :data:`KINDS`), with ``metadata`` as the file's key/value metadata, the
    pages GZIP-compressed unless ``compress`` is false. False, and nothing written (the file is not even opened),
    when a value does not fit its column's kind. OSError from writing propagates."""
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

    gzip = _gzip() if compress else None
    chunks = []
    digits_by_width = {}
    with open(path, "wb") as fh:
        fh.write(b"PAR1")
        offset = 4
        for name, column in zip(names, checked):
            kind = kinds[name]
            start = offset
            raw_size = 0  # the pages' size before compression, their headers included
            if column.dictionary is None:
                encoding = _PLAIN
                value_cuts, values = _plain(kind, column.present, column.ascii_text)
            else:
                encoding = _RLE_DICTIONARY
                body, value_cuts, values = _dictionary_pages(kind, column, digits_by_width)
                entries = len(column.dictionary)
                size = len(body)
                if gzip:
                    body = gzip(body)
                header = _struct(
                    (1, _i32(_DICTIONARY_PAGE)),
                    (2, _i32(size)),  # uncompressed_page_size
                    (3, _i32(len(body))),  # compressed_page_size
                    (7, _struct((1, _i32(entries)), (2, _i32(_PLAIN)))),  # DictionaryPageHeader
                )[1]
                fh.write(header)
                fh.write(body)
                offset += len(header) + len(body)
                raw_size += len(header) + size
            data_start = offset
            pages = 0
            for rows, parts in _pages(num_rows, column.valid, value_cuts, values):
                size = sum(map(len, parts))
                body = gzip(b"".join(parts)) if gzip else parts
                written = len(body) if gzip else size
                header = _struct(
                    (1, _i32(_DATA_PAGE)),
                    (2, _i32(size)),  # uncompressed_page_size
                    (3, _i32(written)),  # compressed_page_size
                    (5, _struct((1, _i32(rows)), (2, _i32(encoding)), (3, _i32(_RLE)), (4, _i32(_RLE)))),
                )[1]
                fh.write(header)
                if gzip:
                    fh.write(body)
                else:
                    fh.writelines(body)
                offset += len(header) + written
                raw_size += len(header) + size
                pages += 1
            chunks.append(_Chunk(name, kind, encoding, start, data_start, offset - start, raw_size, pages,
                                 num_rows - len(column.present), column.int_range))
        footer = _file_metadata(names, kinds, num_rows, chunks, metadata or {}, created_by, bool(gzip))
        fh.write(footer)
        fh.write(_U32.pack(len(footer)))
        fh.write(b"PAR1")
    return True


def _gzip():
    """A function bytes -> one gzip member (RFC 1952, what the GZIP codec means; level 1): isal's, which the
    ingest stage has already imported, else zlib's (~6x slower at level 1)."""
    try:
        from isal.isal_zlib import compress
    except ImportError:  # isal is in install_requires
        from zlib import compress
    return partial(compress, level=1, wbits=31)  # wbits 16 + 15: a gzip header and trailer, no zlib's


class _Column:
    """A column's values once checked (:func:`_check`): ``valid`` one byte per row, 1 for a value and 0 for a null
    (None when no row is null); ``present`` the values that are not null (the caller's list itself when none is);
    ``int_range`` (min, max) of an integer column's values, for the statistics; ``ascii_text`` whether a text
    column is all ASCII; ``dictionary`` the distinct values in order of appearance, when a dictionary pays (see
    :func:`_checked`), else None. A plain class: a NamedTuple cost ~1.5 ms to define at import."""

    __slots__ = ("valid", "present", "int_range", "ascii_text", "dictionary")

    def __init__(self, valid: bytes | None, present: list, int_range: tuple[int, int] | None, ascii_text: bool,
                 dictionary: dict | None):
        self.valid, self.present, self.int_range = valid, present, int_range
        self.ascii_text, self.dictionary = ascii_text, dictionary


class _Chunk:
    """What the footer says about one column chunk: the encoding of its data pages (_PLAIN, or _RLE_DICTIONARY
    after a dictionary page at ``start``), the offsets of its first page and first data page, its size as written
    and uncompressed (page headers included), its number of data pages, nulls and integer range."""

    __slots__ = ("name", "kind", "encoding", "start", "data_start", "size", "raw_size", "pages", "nulls",
                 "int_range")

    def __init__(self, name, kind, encoding, start, data_start, size, raw_size, pages, nulls, int_range):
        self.name, self.kind, self.encoding, self.start, self.data_start = name, kind, encoding, start, data_start
        self.size, self.raw_size, self.pages, self.nulls, self.int_range = size, raw_size, pages, nulls, int_range


def _check(kind: str, values: list) -> _Column | None:
    """None when a value does not fit the column's kind, else the column's non-null values, its nulls, its
    range of integers and its dictionary. A few passes over the values, each in C, and the dictionary's."""
    if kind in ("Int64", "string"):
        sample = values[::max(1, len(values) >> 10)]  # ~1,024 rows spread over the column
        if any(map(is_, sample, repeat(None))) and any(map(is_not, sample, repeat(None))):
            # some rows null, some not (most of the events' optional fields are mostly null): the nulls found by
            # identity, then only the other values' types looked at
            valid = bytes(map(is_not, values, repeat(None)))
            present = list(compress(values, valid))
            if not set(map(type, present)) <= _TYPES[kind]:
                return None
            return _checked(kind, valid, present)
    types = set(map(type, values))
    if not types <= _TYPES[kind]:
        return None
    if types == {type(None)}:  # every row null: nothing more to look at
        return _Column(bytes(len(values)), [], None, True, None)
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
    return _checked(kind, valid, present)


def _checked(kind: str, valid: bytes | None, present: list) -> _Column | None:
    """The rest of :func:`_check` once the values' types are known to fit: the integers' range, the text's
    encoding, the dictionary or not."""
    if kind in ("int64", "Int64"):
        if not present:
            return _Column(valid, present, None, False, None)
        distinct = _distinct(present, INT_DICTIONARY_ENTRIES)
        keys = present if distinct is None else distinct  # the same min and max, from fewer values
        low, high = min(keys), max(keys)
        if low < _INT64_MIN or high > _INT64_MAX:
            return None
        if distinct is not None and not _pays(len(present), len(distinct), 8 * len(distinct), 8 * len(present)):
            distinct = None
        return _Column(valid, present, (low, high), False, distinct)
    if kind == "string":
        distinct = _distinct(present)
        # every value is one of the distinct ones: checking those checks the column
        text = _text(present if distinct is None else distinct)
        if text is None:
            return None
        ascii_text, size = text
        if distinct is not None:
            n, entries = len(present), len(distinct)
            dictionary_bytes = size + 4 * entries
            # PLAIN takes the dictionary's bytes and at least a 4-byte length for each other value: the exact
            # PLAIN size is needed only when that bound does not decide
            plain_bytes = dictionary_bytes + 4 * (n - entries)
            if dictionary_bytes + _index_bytes(n, entries) >= plain_bytes:
                plain_bytes = _text(present)[1] + 4 * n
            if not _pays(n, entries, dictionary_bytes, plain_bytes):
                distinct = None
        return _Column(valid, present, None, ascii_text, distinct)
    # bool: one bit PLAIN, no index is smaller; float64: the events' one float column (time) has as many distinct
    # values as rows (and -0.0 == 0.0 would need keys other than the floats)
    return _Column(valid, present, None, False, None)


def _text(values) -> tuple[bool, int] | None:
    """(all ASCII, UTF-8 bytes) of the str ``values``, or None when one is not valid Unicode (a lone surrogate)
    or too long for a page."""
    text = "".join(values)
    ascii_text = text.isascii()
    if not ascii_text:
        try:
            text = text.encode("utf-8")  # fails on a lone surrogate, as encoding one of the values would
        except UnicodeEncodeError:
            return None
    if len(text) > _MAX_VALUE_BYTES and any(len(v.encode("utf-8")) > _MAX_VALUE_BYTES for v in values):
        return None
    return ascii_text, len(text)


def _distinct(present: list, most: int | None = None) -> dict | None:
    """The distinct values of a column (dict keys, in order of appearance), or None when there are more than
    ``most`` or when a sample says that most values are distinct: ~1,024 values spread over the column (every
    value of a column up to 2,047), all different. The sample spares hashing every value of a column such as
    frame or request_frame (3-4 ms of the ~80 ms write of big.pcap's events), and keeps every column of big.pcap's
    events that a dictionary makes smaller (the least repetitive of them, conn: 761 of 1,033 sampled values
    distinct); the sample's distinct values are also enough to tell that there are more than ``most``."""
    n = len(present)
    sample = present[::max(1, n >> 10)]
    seen = len(set(sample))
    if seen == len(sample) or (most is not None and seen > most):
        return None
    if seen == 1 and present.count(present[0]) == n:  # one distinct value: no hashing of every value
        return {present[0]: None}
    distinct = dict.fromkeys(present)
    return distinct if most is None or len(distinct) <= most else None


def _width(entries: int) -> int:
    """Bits of a dictionary index: 1 for a single value, as pyarrow writes it (not 0)."""
    return max(1, (entries - 1).bit_length())


def _index_bytes(n: int, entries: int) -> int:
    """The size of ``n`` indices into a dictionary of ``entries`` values, in the data pages (about)."""
    return 1 if entries == 1 else (n + 7) // 8 * _width(entries)


def _pays(n: int, entries: int, dictionary_bytes: int, plain_bytes: int) -> bool:
    """Whether ``n`` values, ``entries`` of them distinct, are written with a dictionary: when the dictionary page
    (the distinct values, PLAIN) stays within :data:`DICTIONARY_BYTES` and that page with the indices is smaller
    than the PLAIN values (the module's docstring says why)."""
    return dictionary_bytes <= DICTIONARY_BYTES and dictionary_bytes + _index_bytes(n, entries) < plain_bytes


def _dictionary_pages(kind: str, column: _Column, digits_by_width: dict):
    """(the dictionary page's body, the index of each data page's first value, function (a, b) -> the
    RLE_DICTIONARY values of present[a:b]: the bit width, then the indices in the RLE/bit-packed hybrid).
    ``digits_by_width``: the binary digits of the indices, kept from column to column."""
    present, distinct = column.present, column.dictionary
    n, entries = len(present), len(distinct)
    if kind == "string":
        encoded = list(distinct) if column.ascii_text else list(map(str.encode, distinct))
        body = _text_plain(encoded, column.ascii_text)[1](0, entries)
    else:
        body = _numbers(kind, list(distinct))
    width = _width(entries)
    head = bytes([width])
    if entries == 1:
        zero = bytes((width + 7) // 8)

        def values(a: int, b: int) -> bytes:
            return head + _varint((b - a) << 1) + zero  # one RLE run: every index 0
    else:
        # one bit-packed run: the indices as one little-endian integer, index i in bits [i*width, (i+1)*width),
        # parsed from the binary digits of each value's index, the page's last value first
        strings = digits_by_width.get(width)
        if strings is None or len(strings) < entries:
            pattern = f"0{width}b"
            strings = digits_by_width[width] = [format(i, pattern) for i in range(entries)]
        digits = dict(zip(distinct, strings))

        def values(a: int, b: int) -> bytes:
            groups = (b - a + 7) // 8  # zero-padded to a multiple of 8 values
            packed = int("".join(map(digits.__getitem__, reversed(present[a:b]))), 2)
            return head + _varint(groups << 1 | 1) + packed.to_bytes(groups * width, "little")

    per_page = max(1, PAGE_BYTES * 8 // width)
    return body, list(range(0, n, per_page)) + [n], values


def _numbers(kind: str, values) -> bytes:
    """PLAIN int64 or double values: 8 bytes each, little-endian."""
    numbers = array("d" if kind == "float64" else "q", values)
    if _BIG_ENDIAN:
        numbers.byteswap()
    return numbers.tobytes()


def _text_plain(encoded: list, ascii_text: bool):
    """(sizes, function (a, b) -> the PLAIN bytes of encoded[a:b]): a 4-byte length before each value. ASCII
    text (the usual case) is given as str, one character one byte, and each page is built as one str encoded at
    once; other text as bytes."""
    sizes = list(map(len, encoded))
    prefixes = {size: _U32.pack(size) for size in set(sizes)}
    if ascii_text:
        prefixes = {size: prefix.decode("latin-1") for size, prefix in prefixes.items()}

    def plain(a: int, b: int) -> bytes:
        parts = [b""] * (2 * (b - a))
        parts[::2] = map(prefixes.__getitem__, sizes[a:b])
        parts[1::2] = encoded[a:b]
        return "".join(parts).encode("latin-1") if ascii_text else b"".join(parts)

    return sizes, plain


def _plain(kind: str, present: list, ascii_text: bool):
    """(the index of each page's first value, function (a, b) -> the PLAIN values of present[a:b]) for pages
    of ~PAGE_BYTES: at least one page (an empty one for a column without values)."""
    if kind == "string":
        sizes, plain = _text_plain(present if ascii_text else list(map(str.encode, present)), ascii_text)
        value_cuts = [0]
        if sum(sizes) + 4 * len(sizes) > PAGE_BYTES:  # each value takes 4 + its length
            ends = list(accumulate(map(add, sizes, repeat(4)), initial=0))  # ends[j]: bytes of values[:j]
            while ends[-1] - ends[value_cuts[-1]] > PAGE_BYTES:
                start = value_cuts[-1]
                cut = max(bisect_right(ends, ends[start] + PAGE_BYTES) - 1, start + 1)
                if cut >= len(sizes):
                    break
                value_cuts.append(cut)
        return value_cuts + [len(sizes)], plain
    if kind == "bool":
        def plain(a: int, b: int) -> bytes:
            return _bits(bytes(present[a:b]))

        per_page = PAGE_BYTES * 8
    else:
        def plain(a: int, b: int) -> bytes:
            return _numbers(kind, present[a:b])

        per_page = PAGE_BYTES // 8
    return (list(range(0, len(present), per_page)) + [len(present)] if present else [0, 0]), plain


def _pages(n: int, valid: bytes | None, value_cuts: list, values):
    """The data pages of one column chunk of ``n`` rows, (number of rows, body as a list of bytes) each, encoded
    one at a time as they are asked for: the values ``value_cuts[i]`` to ``value_cuts[i + 1]`` in page i
    (``values(a, b)`` encodes them) with their definition levels."""
    # the row where each page starts: the row of its first value (the nulls before it belong to the page before)
    if valid is None:
        row_cuts = value_cuts
    else:
        positions = list(compress(range(n), valid)) if len(value_cuts) > 2 else []
        row_cuts = [0] + [positions[j] for j in value_cuts[1:-1]] + [n]
    for a, b, ra, rb in zip(value_cuts, value_cuts[1:], row_cuts, row_cuts[1:]):
        levels = _levels(valid[ra:rb] if valid is not None else None, rb - ra)
        yield rb - ra, [_U32.pack(len(levels)), levels, values(a, b)]


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


def _file_metadata(names, kinds, num_rows, chunks, metadata, created_by, compressed) -> bytes:
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
    total = raw_total = 0
    for chunk in chunks:
        total += chunk.size
        raw_total += chunk.raw_size
        statistics = _struct(
            (3, _i64(chunk.nulls)),
            (5, _binary(_I64.pack(chunk.int_range[1])) if chunk.int_range else None),  # max_value
            (6, _binary(_I64.pack(chunk.int_range[0])) if chunk.int_range else None),  # min_value
        )
        dictionary = chunk.encoding == _RLE_DICTIONARY
        # the encodings of the column chunk: of the values (and of the dictionary page), RLE of the levels
        encodings = [_PLAIN, _RLE, _RLE_DICTIONARY] if dictionary else [_PLAIN, _RLE]
        page_stats = [_struct((1, _i32(_DATA_PAGE)), (2, _i32(chunk.encoding)), (3, _i32(chunk.pages)))[1]]
        if dictionary:
            page_stats.insert(0, _struct((1, _i32(_DICTIONARY_PAGE)), (2, _i32(_PLAIN)), (3, _i32(1)))[1])
        meta = _struct(
            (1, _i32(_PHYSICAL[chunk.kind])),
            (2, _list(_CT_I32, [_zigzag(e) for e in encodings])),
            (3, _list(_CT_BINARY, [_binary(chunk.name)[1]])),
            (4, _i32(_GZIP if compressed else _UNCOMPRESSED)),
            (5, _i64(num_rows)),
            (6, _i64(chunk.raw_size)),  # total_uncompressed_size (page headers included)
            (7, _i64(chunk.size)),  # total_compressed_size
            (9, _i64(chunk.data_start)),  # data_page_offset: the first data page
            (11, _i64(chunk.start) if dictionary else None),  # dictionary_page_offset
            (12, statistics),
            (13, _list(_CT_STRUCT, page_stats)),  # encoding_stats: how many pages of each encoding
        )
        column_chunks.append(_struct((2, _i64(0)), (3, meta))[1])  # file_offset: 0, as the format now asks
    row_group = _struct(
        (1, _list(_CT_STRUCT, column_chunks)),
        (2, _i64(raw_total)),  # total_byte_size: uncompressed
        (3, _i64(num_rows)),
        (5, _i64(chunks[0].start if chunks else 4)),  # file_offset: the first page (a dictionary page if any)
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
