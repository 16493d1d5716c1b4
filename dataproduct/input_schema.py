"""A source's data dictionary, enforced on the stream as it loads.

Each declared column must arrive with values that fit its type (cast batch by batch, with
Arrow) and, when required, without nulls. A column the dictionary does not declare is
added, ignored or refused, as the source's `new_columns` policy says. A refusal names the
column, the row (and the line of a pushed file) and shows the offending row.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from dataproduct.descriptor import ColumnSpec
from dataproduct.errors import ValidationError

SAMPLE_CHARS = 200


@dataclass(frozen=True)
class InputRules:
    """What a load must respect: the declared columns and the policy for others.

    `line_offset` turns a row number into a line number of the pushed file (1 for CSV,
    whose first line is the header; 0 for NDJSON); None when lines mean nothing.
    """

    columns: Mapping[str, ColumnSpec]
    new_columns: str = "add"
    line_offset: int | None = None


@cache
def arrow_type(duckdb_type: str) -> pa.DataType:
    """The Arrow type DuckDB hands out for one of its SQL types."""
    cast = exp.Cast(this=exp.Null(), to=exp.DataType.build(duckdb_type, dialect="duckdb"))
    engine = duckdb.connect(":memory:")
    try:
        sql = exp.select(cast.as_("c")).sql("duckdb")
        return engine.sql(sql).to_arrow_table().schema.field("c").type
    finally:
        engine.close()


def conform(
    reader: pa.RecordBatchReader, rules: InputRules | None, source: str
) -> pa.RecordBatchReader:
    """`reader` checked and cast to the declared columns, batch by batch."""
    if rules is None or not rules.columns:
        return reader
    schema = _target_schema(reader.schema, rules, source)
    return pa.RecordBatchReader.from_batches(schema, _conformed(reader, schema, rules, source))


def _target_schema(incoming: pa.Schema, rules: InputRules, source: str) -> pa.Schema:
    names = set(incoming.names)
    missing = [n for n, c in rules.columns.items() if c.required and n not in names]
    if missing:
        raise ValidationError(
            f"input.{source}: required column '{missing[0]}' is missing "
            f"(the data has {', '.join(incoming.names) or 'no columns'})",
            where=f"sources.{source}.columns.{missing[0]}",
        )
    undeclared = [n for n in incoming.names if n not in rules.columns]
    if undeclared and rules.new_columns == "refuse":
        raise ValidationError(
            f"input.{source}: undeclared column(s) {', '.join(undeclared)}; declare them under "
            f"sources.{source}.columns or set new_columns to add or ignore",
            where=f"sources.{source}.new_columns",
            columns=undeclared,
        )
    fields = [pa.field(n, arrow_type(c.type)) for n, c in rules.columns.items()]
    if rules.new_columns == "add":
        fields += [incoming.field(n) for n in undeclared]
    return pa.schema(fields)


def _conformed(
    reader: pa.RecordBatchReader, schema: pa.Schema, rules: InputRules, source: str
) -> Iterator[pa.RecordBatch]:
    offset = 0
    for batch in reader:
        arrays = []
        for target in schema:
            index = batch.schema.get_field_index(target.name)
            if index < 0:
                arrays.append(pa.nulls(batch.num_rows, target.type))
                continue
            column = batch.column(index)
            if column.type != target.type:
                column = _cast(column, target, batch, offset, rules, source)
            spec = rules.columns.get(target.name)
            if spec is not None and spec.required and column.null_count:
                row = _first_null(column)
                problem = "is required but empty"
                raise _refusal(source, target.name, problem, batch, row, offset, rules)
            arrays.append(column)
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)
        offset += batch.num_rows


def _cast(
    column: pa.Array,
    target: pa.Field,
    batch: pa.RecordBatch,
    offset: int,
    rules: InputRules,
    source: str,
) -> pa.Array:
    try:
        return pc.cast(column, target.type, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        row = _first_uncastable(column, target.type)
    declared = rules.columns[target.name].type
    raise _refusal(source, target.name, f"expects {declared}", batch, row, offset, rules)


def _casts(column: pa.Array, target: pa.DataType) -> bool:
    try:
        pc.cast(column, target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return False
    return True


def _first_uncastable(column: pa.Array, target: pa.DataType) -> int:
    """The index of the first value that does not cast (a bisection over slices)."""
    low, high = 0, len(column)
    while high - low > 1:
        middle = (low + high) // 2
        if _casts(column.slice(low, middle - low), target):
            low = middle
        else:
            high = middle
    return low


def _first_null(column: pa.Array) -> int:
    return int(pc.index(pc.is_null(column), True).as_py())


def _refusal(
    source: str,
    column: str,
    problem: str,
    batch: pa.RecordBatch,
    index: int,
    offset: int,
    rules: InputRules,
) -> ValidationError:
    row_number = offset + index + 1
    sample = {k: _shown(v) for k, v in batch.slice(index, 1).to_pylist()[0].items()}
    value = sample.get(column)
    place = f"row {row_number}"
    details: dict[str, Any] = {"column": column, "row": row_number, "sample": sample}
    if rules.line_offset is not None:
        details["line"] = row_number + rules.line_offset
        place += f" (line {details['line']})"
    return ValidationError(
        f"input.{source}: column '{column}' {problem}; {place} has {value!r}",
        where=f"{place}, column {column}",
        **details,
    )


def _shown(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    text = str(value)
    return text if len(text) <= SAMPLE_CHARS else text[:SAMPLE_CHARS] + "..."
