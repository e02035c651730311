"""The RESULTS file of a batch: written incrementally while captures finish, sorted once at the end.

* **csv / jsonl**: rows are appended to RESULTS itself as each capture finishes: all rows of one capture in one
  ``write()`` on an ``O_APPEND`` descriptor, so a killed batch leaves whole captures (a torn last line, if any,
  is dropped when the file is read back). At the end the file is rewritten sorted by (file, client), through a
  temporary file and an atomic rename.
* CSV text cells that a spreadsheet would run as a formula get a leading ``'`` (analyzer.report.safe_text);
  ``--resume`` strips it again when reading RESULTS back.
* **parquet** cannot be appended to, so finished rows go to a journal beside it, ``RESULTS.partial.jsonl``; the
  parquet file is written (sorted) at the end and the journal removed. ``--resume`` reads both.

``--resume`` skips captures whose sha256 is already in RESULTS (or its journal). Without it an existing RESULTS
is replaced.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from pathlib import Path

import pandas as pd
from pandas.api.types import is_numeric_dtype

from analyzer.batch.worker import BATCH_COLUMNS
from analyzer.report.safe_text import FORMULA_STARTS, restore_cell

FORMATS = ("csv", "parquet", "jsonl")


def format_for(path: str, fmt: str | None) -> str:
    if fmt:
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    return "csv"


def _clean(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def sort_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Deterministic order: by file, then client (rows without a client first), then the original order."""
    if df.empty:
        return df.reset_index(drop=True)
    key = pd.DataFrame({"file": df["file"].fillna("").astype(str), "client": df["client"].fillna("").astype(str)})
    order = key.sort_values(["file", "client"], kind="stable").index
    return df.loc[order].reset_index(drop=True)


def rows_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=BATCH_COLUMNS)


def _drop_torn_capture(df: pd.DataFrame, torn_file: str | None) -> pd.DataFrame:
    """Rows of one capture are appended in one write, last in the file. When the last row was torn, the
    complete rows just before it that belong to the same capture (its file cell, or what was left of it) are
    dropped too: that capture is incomplete."""
    if torn_file is None or df.empty:
        return df
    files = df["file"].astype(str).tolist()
    last = files[-1]
    if not (last == torn_file or (torn_file and last.startswith(torn_file)) or torn_file == ""):
        return df
    if torn_file == "":
        return df  # nothing of the torn row was readable: only the torn line goes
    end = len(files)
    while end and files[end - 1] == last:
        end -= 1
    return df.iloc[:end].reset_index(drop=True)


class ResultsStore:
    def __init__(self, path: str, fmt: str | None = None):
        self.path = str(path)
        self.format = format_for(self.path, fmt)
        if self.format not in FORMATS:
            raise ValueError(f"unknown results format {self.format!r} (csv, parquet, jsonl)")
        self.journal = self.path + ".partial.jsonl" if self.format == "parquet" else self.path
        self._fd: int | None = None

    # -- reading back ------------------------------------------------------------------------------------------

    def load(self) -> pd.DataFrame:
        """Rows already in RESULTS (final file and journal); empty when there are none."""
        frames = []
        if self.format == "parquet":
            if os.path.exists(self.path):
                try:
                    frames.append(pd.read_parquet(self.path))
                except Exception as exc:  # a parquet file cut by a crash is unreadable as a whole
                    raise ValueError(f"{self.path}: cannot read existing results: {exc}") from None
            frames.append(self._read_jsonl(self.journal))
        elif self.format == "jsonl":
            frames.append(self._read_jsonl(self.path))
        else:
            frames.append(self._read_csv(self.path))
        frames = [f for f in frames if not f.empty]
        if not frames:
            return rows_frame([])
        df = pd.concat(frames, ignore_index=True)
        for col in BATCH_COLUMNS:
            if col not in df.columns:
                df[col] = None
        return df[BATCH_COLUMNS]

    @staticmethod
    def _read_jsonl(path: str) -> pd.DataFrame:
        if not os.path.exists(path):
            return rows_frame([])
        rows = []
        torn_file = None
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                except ValueError:
                    # torn last line of an interrupted batch: the capture it belonged to is scored again
                    m = re.match(r'\{"file": "((?:[^"\\]|\\.)*)', line)
                    torn_file = m.group(1) if m else ""
                    continue
                if isinstance(row, dict):
                    rows.append(row)
        return _drop_torn_capture(rows_frame(rows), torn_file)

    @staticmethod
    def _read_csv(path: str) -> pd.DataFrame:
        if not os.path.exists(path) or os.path.getsize(path) == 0:
            return rows_frame([])
        with open(path, encoding="utf-8", newline="") as fh:
            text = fh.read()
        torn_file = None
        if not text.endswith("\n"):
            # A torn last row (a killed batch, a cut copy). Its newline may sit inside a quoted cell, so step back
            # until the quotes before the cut balance. All rows of the capture it belonged to are dropped, so
            # --resume scores that capture again instead of keeping it with rows missing.
            cut = text.rfind("\n") + 1
            while cut and text.count('"', 0, cut) % 2:
                cut = text.rfind("\n", 0, cut - 1) + 1
            torn = text[cut:]
            text = text[:cut]
            try:
                fields = next(csv.reader([torn]))
            except (csv.Error, StopIteration):
                fields = []
            torn_file = restore_cell(fields[0]) if fields else ""
        if not text.strip():
            return rows_frame([])
        df = pd.read_csv(io.StringIO(text), dtype={"sha256": str, "file": str, "client": str})
        for col in df.columns:
            if not is_numeric_dtype(df[col]):
                df[col] = df[col].map(restore_cell)  # our own formula neutralisation, undone
        return _drop_torn_capture(df, torn_file)

    def done_hashes(self) -> set[str]:
        df = self.load()
        return {h for h in df["sha256"].dropna().astype(str) if h}

    # -- writing -----------------------------------------------------------------------------------------------

    def start(self, keep: pd.DataFrame | None) -> None:
        """Begin a run: RESULTS (or the journal) holds exactly ``keep`` (the rows resumed), then rows append."""
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        keep = keep if keep is not None else rows_frame([])
        if self.format == "parquet":
            # resumed rows live in the journal until the final write
            self._atomic_write(self.journal, self._jsonl_text(keep))
            if os.path.exists(self.path):
                os.unlink(self.path)
        elif self.format == "jsonl":
            self._atomic_write(self.path, self._jsonl_text(keep))
        else:
            self._atomic_write(self.path, self._csv_text(keep, header=True))
        self._fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND)

    def append(self, rows: list[dict]) -> None:
        """All rows of one finished capture, in one write. Serialised straight from the dicts: building a
        DataFrame per capture cost 30-50 ms each (measured), more than the analysis of a small capture."""
        if not rows:
            return
        if self.format == "csv":
            data = self._csv_lines(rows, header=False)
        else:
            data = self._jsonl_lines(rows)
        os.write(self._fd, data.encode("utf-8"))

    def finish(self, df: pd.DataFrame) -> None:
        """Replace RESULTS with the complete, sorted table."""
        self.close()
        if self.format == "parquet":
            tmp = self.path + ".tmp"
            try:
                df.to_parquet(tmp, index=False)
            except Exception:
                # mixed Python types in an object column: store those columns as text
                fixed = df.copy()
                for col in fixed.columns:
                    if fixed[col].dtype == object:
                        fixed[col] = fixed[col].map(lambda v: None if v is None else str(v))
                fixed.to_parquet(tmp, index=False)
            os.replace(tmp, self.path)
            if os.path.exists(self.journal):
                os.unlink(self.journal)
        elif self.format == "jsonl":
            self._atomic_write(self.path, self._jsonl_text(df))
        else:
            self._atomic_write(self.path, self._csv_text(df, header=True))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @classmethod
    def _jsonl_text(cls, df: pd.DataFrame) -> str:
        return cls._jsonl_lines(df.to_dict(orient="records"))

    @classmethod
    def _csv_text(cls, df: pd.DataFrame, header: bool) -> str:
        # column lists, not to_dict(orient="records"): the same Python values, in a third of the time (the final
        # rewrite of RESULTS runs after the last capture, while no worker has anything left to do)
        return cls._csv_values(zip(*(df[c].tolist() for c in BATCH_COLUMNS)), header)

    @staticmethod
    def _jsonl_lines(rows: list[dict]) -> str:
        out = []
        for row in rows:
            out.append(json.dumps({c: _clean(row.get(c)) for c in BATCH_COLUMNS}, default=str, ensure_ascii=False))
        return "".join(line + "\n" for line in out)

    @classmethod
    def _csv_lines(cls, rows: list[dict], header: bool) -> str:
        return cls._csv_values(([row.get(c) for c in BATCH_COLUMNS] for row in rows), header)

    @staticmethod
    def _csv_values(rows, header: bool) -> str:
        """CSV of rows given as values in ``BATCH_COLUMNS`` order: None and NaN as empty cells (``_clean``), text
        neutralised (``neutralise_cell``), both inlined: the driver serialises every row while the workers run,
        on the same cores (8 x 100 rows: 33-40 ms with a call of each per cell)."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        if header:
            writer.writerow(BATCH_COLUMNS)
        writer.writerows(
            ["" if v is None or (isinstance(v, float) and v != v)
             else "'" + v if isinstance(v, str) and v.startswith(FORMULA_STARTS) else v for v in values]
            for values in rows)
        return buf.getvalue()

    @staticmethod
    def _atomic_write(path: str, text: str) -> None:
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
