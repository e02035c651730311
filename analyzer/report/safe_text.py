"""Text that came from a capture or the file system, made safe for the two places it can do harm.

* **CSV read by a spreadsheet** (formula injection): a cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a
  carriage return is a formula to Excel/LibreOffice (``=HYPERLINK(...)``, ``@SUM(...)``, DDE). Such *text* cells
  get a leading ``'``, the spreadsheet convention for "this is text" (OWASP's advice); the apostrophe is shown by
  nothing but the cell editor. Numbers (a negative interval) are left alone: only strings are neutralised.
* **Text on a terminal**: control characters (ESC sequences can rewrite the screen or the window title, a newline
  can forge a report line) are shown escaped, ``\\x1b`` style, as ``ls -b`` does.
"""

from __future__ import annotations

import re

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def neutralise_cell(value):
    """A CSV cell value with formula injection neutralised (non-strings unchanged)."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def restore_cell(value):
    """Inverse of :func:`neutralise_cell` for a cell read back from our own CSV."""
    if isinstance(value, str) and len(value) > 1 and value[0] == "'" and value[1:].startswith(FORMULA_STARTS):
        return value[1:]
    return value


def neutralise_frame(df):
    """A copy of a DataFrame whose text cells are neutralised (numeric columns untouched)."""
    from pandas.api.types import is_numeric_dtype

    out = df.copy()
    for col in out.columns:
        if not is_numeric_dtype(out[col]):
            out[col] = out[col].map(neutralise_cell).astype(out[col].dtype)
    return out


def escape_controls(text: str) -> str:
    """``text`` with every control character (C0, DEL, C1; newline and tab included) written as an escape."""
    return _CONTROLS.sub(lambda m: _escape(m.group()), text)


def _escape(ch: str) -> str:
    code = ord(ch)
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
