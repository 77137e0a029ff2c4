"""CSV that spreadsheets open safely: cells they would run as a formula are escaped.

A spreadsheet (Excel, LibreOffice, Google Sheets) runs a cell that starts with ``=``, ``+``,
``-`` or ``@`` as a formula, and one that starts with a tab or a carriage return after
trimming it. Clip paths, user names and custom labels are user data that can start so (a file
named ``=HYPERLINK(...).mp4``). Every CSV the package writes goes through :func:`safe_cell`
(:class:`DictWriter`): such a *string* cell gets a leading apostrophe (``'``), which spreadsheets
show as text, the OWASP recommendation, and a cell holding a line break is always quoted (so
that it cannot start a row of its own). Numbers, negative ones included, are not strings and
stay numbers.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["FORMULA_PREFIXES", "safe_cell", "safe_row", "DictWriter"]

#: the first characters that make a spreadsheet read a cell as a formula
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """``value`` with a leading ``'`` when it is a string starting with one of
    :data:`FORMULA_PREFIXES`; anything else (numbers, ``None``, plain strings) unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def safe_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row (dict) with its keys (the header's names) and string values escaped by :func:`safe_cell`."""
    return {safe_cell(k): safe_cell(v) for k, v in row.items()}


class DictWriter:
    """A :class:`csv.DictWriter` for files others open: every cell goes through
    :func:`safe_cell` (the header's names too), and a cell holding a CR or LF is always quoted
    (Python's writer leaves a bare CR unquoted unless it is in ``lineterminator``: a spreadsheet
    then starts a new row there, whose first cell is unescaped). Give it field names and rows
    as they are (unescaped).
    """

    def __init__(self, f: Any, fieldnames: Iterable[str], *, lineterminator: str = "\r\n", restval: Any = "", **fmtparams: Any) -> None:
        self.fieldnames = list(fieldnames)
        self._f, self._end, self._restval = f, lineterminator, restval
        self._buf = io.StringIO(newline="")
        self._writer = csv.writer(self._buf, lineterminator="\r\n", **fmtparams)  # quotes any cell with CR or LF

    def writeheader(self) -> None:
        self._write(self.fieldnames)

    def writerow(self, rowdict: Mapping[str, Any]) -> None:
        extra = set(rowdict) - set(self.fieldnames)
        if extra:
            raise ValueError(f"dict contains fields not in fieldnames: {sorted(extra)}")
        self._write([rowdict.get(k, self._restval) for k in self.fieldnames])

    def writerows(self, rowdicts: Iterable[Mapping[str, Any]]) -> None:
        for r in rowdicts:
            self.writerow(r)

    def _write(self, values: list[Any]) -> None:
        self._buf.seek(0)
        self._buf.truncate()
        self._writer.writerow([safe_cell(v) for v in values])
        self._f.write(self._buf.getvalue()[:-2] + self._end)
