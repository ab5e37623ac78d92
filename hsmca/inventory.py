"""The site inventory for `hsmca batch`: one CSV row per recording server, checked row by row.

Columns: `dns` (required; several names separated by `;` or by `,` inside quotes), and optional
`ip`, `out`, `days`, `key_type`. Line numbers count the header as line 1, as a spreadsheet does.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import PurePath

from . import x509build
from .errors import HsmcaError, InvalidRequest
from .models import SERVER_KEY_TYPES, KeyType, ServerRequest

COLUMNS = ("dns", "ip", "out", "days", "key_type")
_SEPARATORS = re.compile(r"[;,]")


@dataclass(frozen=True)
class InventoryRow:
    line: int
    request: ServerRequest
    out: PurePath | None
    """The output file named in the row, if any (relative paths go under --out-dir)."""


@dataclass(frozen=True)
class RowError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True)
class Inventory:
    rows: list[InventoryRow]
    errors: list[RowError]


def _names(value: str) -> list[str]:
    return _SEPARATORS.split(value)


def _delimiter(header: str) -> str:
    # Spreadsheets in many locales save "CSV" with semicolons between columns.
    return ";" if ";" in header and "," not in header else ","


def parse_inventory(
    text: str, default_days: int = 365, default_key_type: KeyType = KeyType.RSA2048
) -> Inventory:
    """Parse the CSV text; a bad header raises, a bad row becomes a RowError and is skipped."""
    text = text.removeprefix("\ufeff")
    header_line = text.split("\n", 1)[0]
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(header_line))
    try:
        header = next(reader)
    except StopIteration:
        raise InvalidRequest(
            "the inventory is empty; its first line must name the columns"
        ) from None
    except csv.Error as exc:
        raise InvalidRequest(f"line 1: {exc}") from None
    columns = [name.strip().lower() for name in header]
    unknown = [name for name in columns if name not in COLUMNS]
    if unknown:
        raise InvalidRequest(
            f"line 1: unknown column {unknown[0]!r}; the columns are {', '.join(COLUMNS)}"
        )
    if "dns" not in columns:
        raise InvalidRequest("line 1: the inventory needs a 'dns' column")
    if len(set(columns)) != len(columns):
        raise InvalidRequest("line 1: a column is named twice")

    rows: list[InventoryRow] = []
    errors: list[RowError] = []
    outputs: dict[str, int] = {}
    line = reader.line_num + 1
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            errors.append(RowError(line, f"not valid CSV: {exc}"))
            break
        start, line = line, reader.line_num + 1
        if not any(cell.strip() for cell in record) or record[0].lstrip().startswith("#"):
            continue
        if len(record) > len(columns):
            errors.append(
                RowError(start, f"{len(record)} values but {len(columns)} columns: {record!r}")
            )
            continue
        cells = dict(zip(columns, (cell.strip() for cell in record), strict=False))
        try:
            row = _row(start, cells, default_days, default_key_type)
        except HsmcaError as exc:
            errors.append(RowError(start, str(exc)))
            continue
        target = str(row.out) if row.out else f"{row.request.common_name}.pfx"
        if target in outputs:
            errors.append(
                RowError(
                    start, f"writes {target!r} like line {outputs[target]}; give it its own out"
                )
            )
            continue
        outputs[target] = start
        rows.append(row)
    return Inventory(rows, errors)


def _row(line: int, cells: dict[str, str], default_days: int, default_key_type: KeyType):
    days_text = cells.get("days", "")
    if days_text:
        if not days_text.isdigit():
            raise InvalidRequest(f"days {days_text!r} is not a whole number")
        days = int(days_text)
    else:
        days = default_days
    key_text = cells.get("key_type", "").lower()
    if key_text:
        allowed = [k.value for k in SERVER_KEY_TYPES]
        if key_text not in allowed:
            raise InvalidRequest(f"key_type {key_text!r} must be one of {', '.join(allowed)}")
        key_type = KeyType(key_text)
    else:
        key_type = default_key_type
    request = x509build.server_request(
        _names(cells.get("dns", "")), _names(cells.get("ip", "")), days, key_type
    )
    out_text = cells.get("out", "")
    return InventoryRow(line, request, PurePath(out_text) if out_text else None)
