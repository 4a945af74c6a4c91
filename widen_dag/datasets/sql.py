"""The dbt-like SQL layer: one SELECT per ``dbt_like_sql/*.sql`` file, run over DuckDB.

* the file stem is the model (asset) name; a leading ``--`` comment block is its description;
* dependencies are the tables the SELECT reads, found with sqlglot (CTE names excluded);
* every asset in the lake is visible to SQL under its own name (a DuckDB view over its
  Parquet), so Python assets and SQL models mix freely;
* a model's code_version is a hash of its SQL;
* ``checks/*.sql`` must return zero rows; a header line ``-- model: <name>`` names the model
  it checks and ``-- blocking: true`` makes a failure stop the downstream run.

No Dagster here: widen_dag.defs.assets.sql wraps this in one multi-asset.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any, NamedTuple

import duckdb
import polars as pl
import sqlglot
from sqlglot import exp

from widen_dag.storage.lake import Lake, Written, ddl

SQL_DIR = Path(__file__).resolve().parents[2] / "dbt_like_sql"
_HEADER_RE = re.compile(r"^--\s?(.*)$")
_META_RE = re.compile(r"^(model|blocking|description)\s*:\s*(.+)$", re.IGNORECASE)


class SqlModelError(ValueError):
    """A model file that is not one SELECT, or a graph that cannot run; names the file."""


@dataclass(frozen=True)
class SqlModel:
    name: str
    path: Path
    sql: str
    description: str
    deps: tuple[str, ...]
    code_version: str
    params: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class SqlCheck:
    name: str
    model: str
    path: Path
    sql: str
    description: str
    blocking: bool


def _header(text: str) -> tuple[list[str], dict[str, str]]:
    lines, meta = [], {}
    for line in text.splitlines():
        m = _HEADER_RE.match(line.strip())
        if not m:
            break
        body = m.group(1).strip()
        kv = _META_RE.match(body)
        if kv:
            meta[kv.group(1).lower()] = kv.group(2).strip()
        else:
            lines.append(body)
    return lines, meta


def _parse_select(path: Path, sql: str) -> exp.Expression:
    try:
        statements = [s for s in sqlglot.parse(sql, read="duckdb") if s is not None]
    except sqlglot.errors.ParseError as err:
        raise SqlModelError(f"{path.name}: not valid SQL: {str(err).splitlines()[0]}") from None
    if len(statements) != 1 or not isinstance(statements[0], exp.Query):
        raise SqlModelError(f"{path.name}: must hold exactly one SELECT statement")
    return statements[0]


def table_refs(tree: exp.Expression) -> set[str]:
    """Tables a query reads, without its own CTE names and table functions."""
    ctes = {c.alias_or_name for c in tree.find_all(exp.CTE)}
    return {t.name for t in tree.find_all(exp.Table) if t.name and t.name not in ctes and not t.args.get("db")}


def load_models(sql_dir: Path = SQL_DIR) -> dict[str, SqlModel]:
    if not sql_dir.is_dir():
        raise SqlModelError(f"no SQL model folder at {sql_dir}")
    models = {}
    for path in sorted(sql_dir.glob("*.sql")):
        sql = path.read_text()
        tree = _parse_select(path, sql)
        lines, _ = _header(sql)
        params = tuple(sorted(set(re.findall(r"\$([a-z_]+)", sql))))
        models[path.stem] = SqlModel(
            name=path.stem, path=path, sql=sql, description="\n".join(lines).strip() or f"SQL model {path.stem}",
            deps=tuple(sorted(table_refs(tree))), code_version=hashlib.sha256(sql.encode()).hexdigest()[:16], params=params,
        )
    order(models, list(models))  # fail early on cycles
    return models


def load_checks(models: dict[str, SqlModel], sql_dir: Path = SQL_DIR) -> list[SqlCheck]:
    checks = []
    for path in sorted((sql_dir / "checks").glob("*.sql")):
        sql = path.read_text()
        _parse_select(path, sql)
        lines, meta = _header(sql)
        model = meta.get("model")
        if not model:
            raise SqlModelError(f"checks/{path.name}: needs a '-- model: <name>' header line")
        if model not in models:
            raise SqlModelError(f"checks/{path.name}: names unknown model {model!r}")
        checks.append(SqlCheck(path.stem, model, path, sql, " ".join(lines).strip() or path.stem,
                               meta.get("blocking", "false").lower() == "true"))
    return checks


def order(models: dict[str, SqlModel], selected: list[str]) -> list[str]:
    """Selected models in dependency order (dependencies outside the selection are inputs)."""
    graph = {name: [d for d in models[name].deps if d in selected] for name in selected}
    try:
        return list(TopologicalSorter(graph).static_order())
    except CycleError as err:
        raise SqlModelError(f"SQL models form a cycle: {' -> '.join(err.args[1])}") from None


def _bind(sql: str, params: dict[str, Any]) -> str:
    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in params:
            raise SqlModelError(f"SQL parameter ${key} has no value")
        value = params[key]
        if isinstance(value, str):  # a quoted literal: a parameter can never become SQL
            return "'" + value.replace("'", "''") + "'"
        if isinstance(value, bool):
            return "TRUE" if value else "FALSE"
        if isinstance(value, (int, float)):
            return repr(value)
        raise SqlModelError(f"SQL parameter ${key}: only text, numbers and booleans are bound, got {type(value).__name__}")

    return re.sub(r"\$([a-z_]+)", sub, sql)


class ModelRun(NamedTuple):
    name: str
    df: pl.DataFrame
    written: Written
    seconds: float  # the query and its hand-over to Polars, not the write


def run_models(lake: Lake, models: dict[str, SqlModel], selected: list[str], params: dict[str, Any] | None = None,
               con: duckdb.DuckDBPyConnection | None = None) -> Iterator[ModelRun]:
    """Run ``selected`` in dependency order over one connection, writing each to the lake
    as soon as it is computed; yields a ModelRun (name, result, where it was written, seconds).

    Parquet files are written on a background thread, in order, while later models compute; a
    model is yielded once its file is in place, also when a later model fails."""
    con = con or lake.connect()
    params = params or {}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lake-writer") as writer:
        pending: deque[tuple[str, pl.DataFrame, Future[Written], float]] = deque()

        def landed(wait: bool) -> Iterator[ModelRun]:
            while pending and (wait or pending[0][2].done()):
                name, df, written, seconds = pending.popleft()
                yield ModelRun(name, df, written.result(), seconds)

        try:
            for name in order(models, selected):
                started = time.perf_counter()
                df = _compute(con, models[name], selected, params)
                pending.append((name, df, writer.submit(lake.write_table, name, df), time.perf_counter() - started))
                yield from landed(wait=False)
        except GeneratorExit:  # the caller stopped listening; the writer still finishes its files
            raise
        except BaseException:
            yield from landed(wait=True)  # what was computed before the failure still lands, reported
            raise
        yield from landed(wait=True)


def _compute(con: duckdb.DuckDBPyConnection, model: SqlModel, selected: list[str], params: dict[str, Any]) -> pl.DataFrame:
    missing = [d for d in model.deps if d not in selected and not _has_relation(con, d)]
    if missing:
        raise SqlModelError(f"{model.name}: reads {', '.join(missing)}, which has not been materialized")
    result = con.sql(_bind(model.sql, params)).to_arrow_table()
    # Downstream models and checks in this run scan the result in memory (plain Arrow strings
    # scan as fast as a native table) instead of decoding the Parquet being written.
    con.register(f"_model_{model.name}", result)
    ddl(con, f'CREATE OR REPLACE TEMP VIEW "{model.name}" AS SELECT * FROM "_model_{model.name}"')
    return pl.from_arrow(result)


def run_check(con: duckdb.DuckDBPyConnection, check: SqlCheck, params: dict[str, Any] | None = None) -> pl.DataFrame:
    return con.sql(_bind(check.sql, params or {})).pl()


def _has_relation(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    rows = con.execute(
        "select count(*) from (select view_name as n from duckdb_views() union all select table_name from duckdb_tables()) where n = ?",
        [name],
    ).fetchall()
    return rows[0][0] > 0
