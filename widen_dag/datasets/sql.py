"""The dbt-like SQL layer: one SELECT per ``dbt_like_sql/*.sql`` file, run over DuckDB.

* the file stem is the model (asset) name; a leading ``--`` comment block is its description;
* dependencies are the tables the SELECT reads, found with sqlglot (CTE names excluded);
* every asset in the lake is visible to SQL under its own name (a DuckDB view over its
  Parquet), so Python assets and SQL models mix freely;
* a model's code_version is a hash of its SQL;
* ``checks/*.sql`` must return zero rows; a header line ``-- model: <name>`` names the model
  it checks and ``-- blocking: true`` makes a failure stop the downstream run;
* a header line ``-- batch_by: problem_id`` declares that the model's rows for a set of
  problems depend only on those problems' rows of its inputs (inputs without that column are
  lookups): a large run then computes it per range of problems under a bounded memory and
  streams the result to the lake (see run_models).

No Dagster here: widen_dag.defs.assets.sql wraps this in one multi-asset.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import re
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any, NamedTuple

import duckdb
import polars as pl
import sqlglot
from sqlglot import exp

from widen_dag.storage.lake import Lake, TableWriter, Written, ddl

SQL_DIR = Path(__file__).resolve().parents[2] / "dbt_like_sql"
_HEADER_RE = re.compile(r"^--\s?(.*)$")
_META_RE = re.compile(r"^(model|blocking|description|batch_by)\s*:\s*(.+)$", re.IGNORECASE)


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
    batch_by: str | None = None  # the column whose value ranges the model can run on separately
    order_by: tuple[str, ...] | None = None  # output columns of the final ORDER BY; None: not plain columns


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


def order_columns(tree: exp.Expression) -> tuple[str, ...] | None:
    """Column names of the query's final ORDER BY when each item is a plain ascending column
    (``t.path_id`` -> ``path_id``), () without one, None for anything else."""
    order_clause = tree.args.get("order")
    if order_clause is None:
        return ()
    names = []
    for item in order_clause.expressions:
        if not isinstance(item.this, exp.Column) or item.args.get("desc") or item.args.get("nulls_first"):
            return None
        names.append(item.this.name)
    return tuple(names)


def load_models(sql_dir: Path = SQL_DIR) -> dict[str, SqlModel]:
    if not sql_dir.is_dir():
        raise SqlModelError(f"no SQL model folder at {sql_dir}")
    models = {}
    for path in sorted(sql_dir.glob("*.sql")):
        sql = path.read_text()
        tree = _parse_select(path, sql)
        lines, meta = _header(sql)
        params = tuple(sorted(set(re.findall(r"\$([a-z_]+)", sql))))
        batch_by = meta.get("batch_by")
        if batch_by is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", batch_by):
            raise SqlModelError(f"{path.name}: batch_by must name one column, got {batch_by!r}")
        models[path.stem] = SqlModel(
            name=path.stem,
            path=path,
            sql=sql,
            description="\n".join(lines).strip() or f"SQL model {path.stem}",
            deps=tuple(sorted(table_refs(tree))),
            code_version=hashlib.sha256(sql.encode()).hexdigest()[:16],
            params=params,
            batch_by=batch_by,
            order_by=order_columns(tree),
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
        checks.append(
            SqlCheck(
                path.stem, model, path, sql, " ".join(lines).strip() or path.stem, meta.get("blocking", "false").lower() == "true"
            )
        )
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


@dataclass(frozen=True)
class DuckDBSettings:
    """How the SQL layer may use the machine (the profile's ``data.duckdb``).

    ``memory_limit`` caps DuckDB's buffer manager, which spills to ``temp_directory`` beyond it
    (None there: a private temporary folder per run, not DuckDB's ``.tmp`` in the working
    directory); ``batch_rows`` > 0 runs the ``batch_by`` models per range of keys holding about
    that many input rows and streams their results to the lake, so peak memory follows the
    batch, not the run. Results are the same either way."""

    memory_limit: str | None = None
    temp_directory: str | None = None
    threads: int | None = None
    batch_rows: int | None = None


class ModelRun(NamedTuple):
    name: str
    df: pl.DataFrame | None  # the whole result; None when it was streamed to the lake in batches
    written: Written
    seconds: float  # the query and its hand-over to Polars (Arrow when batched), not the write
    batches: int = 1

    def lazy(self) -> pl.LazyFrame:
        """The result without loading it: from memory, or scanned from the written file."""
        return self.df.lazy() if self.df is not None else pl.scan_parquet(self.written.uri)


class BatchProgress(NamedTuple):
    """One batch of a batched run, for progress logs: which keys, how much, how fast."""

    index: int  # 1-based
    total: int
    first_key: Any
    last_key: Any
    input_rows: int  # rows of the keyed inputs in this batch
    output_rows: dict[str, int]
    seconds: float
    duckdb_memory_bytes: int  # duckdb_memory() after the batch: held in memory, spilled to disk
    duckdb_temp_bytes: int


def run_models(
    lake: Lake,
    models: dict[str, SqlModel],
    selected: list[str],
    params: dict[str, Any] | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
    settings: DuckDBSettings | None = None,
    progress: Callable[[BatchProgress], None] | None = None,
) -> Iterator[ModelRun]:
    """Run ``selected`` in dependency order over one connection, writing each to the lake
    as soon as it is computed; yields a ModelRun (name, result, where it was written, seconds).

    Parquet files are written on a background thread, in order, while later models compute; a
    model is yielded once its file is in place, also when a later model fails.

    With ``settings.batch_rows`` and more input than that, the ``batch_by`` models run per batch
    of keys (all of them on one batch, then the next), each result appended to a staged file
    that is published once every batch is done (a failure publishes none of them); ``progress``
    hears of every batch. Rows and their order are those of a run in one piece."""
    con = con or lake.connect()
    params = params or {}
    names = order(models, selected)
    with _configured(con, settings) as spill_dir:
        group, plan, sources = _batch_plan(con, models, names, settings.batch_rows if settings else None)
        if len(plan) > 1:
            yield from _run_batched(lake, con, models, group, plan, sources, params, spill_dir, progress)
            names = [n for n in names if n not in group]
        yield from _run_whole(lake, con, models, names, selected, params)


def _run_whole(
    lake: Lake,
    con: duckdb.DuckDBPyConnection,
    models: dict[str, SqlModel],
    names: list[str],
    selected: list[str],
    params: dict[str, Any],
) -> Iterator[ModelRun]:
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lake-writer") as writer:
        pending: deque[tuple[str, pl.DataFrame, Future[Written], float]] = deque()

        def landed(wait: bool) -> Iterator[ModelRun]:
            while pending and (wait or pending[0][2].done()):
                name, df, written, seconds = pending.popleft()
                yield ModelRun(name, df, written.result(), seconds)

        try:
            for name in names:
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


# ---- batched runs ---------------------------------------------------------------------------
@contextlib.contextmanager
def _configured(con: duckdb.DuckDBPyConnection, settings: DuckDBSettings | None) -> Iterator[str | None]:
    """Apply the settings; yields the folder DuckDB spills to (also where remote lakes stage)."""
    if settings is None:
        yield None
        return
    if settings.memory_limit:
        ddl(con, f"SET memory_limit = {_literal(settings.memory_limit)}")
    if settings.threads:
        ddl(con, f"SET threads = {int(settings.threads)}")
    if settings.temp_directory:
        Path(settings.temp_directory).mkdir(parents=True, exist_ok=True)
        ddl(con, f"SET temp_directory = {_literal(settings.temp_directory)}")
        yield settings.temp_directory
        return
    with tempfile.TemporaryDirectory(prefix="widen-duckdb-") as tmp:
        ddl(con, f"SET temp_directory = {_literal(tmp)}")
        yield tmp


def _literal(value: Any) -> str:
    """A key or setting as a SQL literal (text quoted, so a value can never become SQL)."""
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, float)):
        return repr(value)
    raise SqlModelError(f"cannot batch on a {type(value).__name__} key; use text or numbers")


class _Batch(NamedTuple):
    first: Any  # None only when the batch holds nothing but NULL keys
    last: Any
    rows: int
    nulls: bool  # NULL keys sort last (DuckDB's default), so they ride with the last batch


def _batch_plan(
    con: duckdb.DuckDBPyConnection, models: dict[str, SqlModel], names: list[str], batch_rows: int | None
) -> tuple[list[str], list[_Batch], dict[str, str]]:
    """The models that can run in batches (``batch_by`` set, inputs outside the run or in the
    group), the batches (contiguous key ranges of whole keys, ~batch_rows input rows each) and
    the keyed inputs by name, qualified so a batch's temp view can shadow them."""
    if not batch_rows:
        return [], [], {}
    group: list[str] = []
    key = None
    for name in names:
        m = models[name]
        if (
            m.batch_by
            and m.order_by is not None
            and (key is None or m.batch_by == key)
            and all(d in group or d not in names for d in m.deps)
        ):
            group.append(name)
            key = m.batch_by
    inputs = sorted({d for n in group for d in models[n].deps if d not in names})
    if not group or not all(_has_relation(con, d) for d in inputs):
        return [], [], {}  # a missing input fails in the plain run, with its message
    sources = {}
    for name in inputs:
        where = con.execute(
            "select database_name, schema_name, temporary from duckdb_views() where view_name = ? "
            "union all select database_name, schema_name, temporary from duckdb_tables() where table_name = ?",
            [name, name],
        ).fetchall()
        if not where or where[0][2]:
            return [], [], {}  # only lake views and tables can be shadowed per batch
        if key in con.sql(f'select * from "{where[0][0]}"."{where[0][1]}"."{name}" limit 0').columns:
            sources[name] = f'"{where[0][0]}"."{where[0][1]}"."{name}"'
    if not sources:
        return [], [], {}
    counts = " union all ".join(f'select "{key}" as k, count(*) as n from {q} group by 1' for q in sources.values())
    plan: list[_Batch] = []
    first = last = None
    rows = 0
    for k, n in con.sql(f"select k, sum(n)::bigint from ({counts}) group by 1 order by 1 nulls last").fetchall():
        if k is None:
            plan.append(_Batch(first, last, rows + n, True)) if rows else plan.append(_Batch(None, None, n, True))
            rows = 0
            break
        if rows and rows + n > batch_rows:
            plan.append(_Batch(first, last, rows, False))
            rows = 0
        if not rows:
            first = k
        last, rows = k, rows + n
    if rows:
        plan.append(_Batch(first, last, rows, False))
    return group, plan, sources


def _batch_filter(key: str, batch: _Batch) -> str:
    cond = [] if batch.first is None else [f'"{key}" BETWEEN {_literal(batch.first)} AND {_literal(batch.last)}']
    return " OR ".join([*cond, *([f'"{key}" IS NULL'] if batch.nulls else [])])


def _run_batched(
    lake: Lake,
    con: duckdb.DuckDBPyConnection,
    models: dict[str, SqlModel],
    group: list[str],
    plan: list[_Batch],
    sources: dict[str, str],
    params: dict[str, Any],
    spill_dir: str | None,
    progress: Callable[[BatchProgress], None] | None,
) -> Iterator[ModelRun]:
    key = models[group[0]].batch_by
    writers = {name: lake.table_writer(name, staging_dir=spill_dir) for name in group}
    bounds: dict[str, list[tuple[tuple, tuple]]] = {name: [] for name in group}  # first/last sort keys per batch
    seconds = dict.fromkeys(group, 0.0)
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lake-writer") as pool:
            writing: list[Future[None]] = []
            for i, batch in enumerate(plan, 1):
                started = time.perf_counter()
                where = _batch_filter(key, batch)
                for name, qualified in sources.items():
                    # A table, not a view: tree_paths' recursive step reads its input once per
                    # depth level, and a view would rescan the whole lake input (every batch's
                    # rows) each time, so the run grew with (input size) x (number of batches).
                    ddl(con, f'CREATE OR REPLACE TEMP TABLE "{name}" AS SELECT * FROM {qualified} WHERE {where}')
                results = {}
                for name in group:
                    t0 = time.perf_counter()
                    table = con.sql(_bind(models[name].sql, params)).to_arrow_table()
                    seconds[name] += time.perf_counter() - t0
                    con.register(f"_model_{name}", table)
                    ddl(con, f'CREATE OR REPLACE TEMP VIEW "{name}" AS SELECT * FROM "_model_{name}"')
                    results[name] = table
                    if table.num_rows and models[name].order_by:
                        bounds[name].append(_edge_keys(models[name], table))
                for f in writing:  # one batch in the writer while the next computes, no more
                    f.result()
                writing = [pool.submit(writers[name].write, results[name]) for name in group]
                if progress is not None:
                    mem, tmp = con.sql(
                        "select sum(memory_usage_bytes)::bigint, sum(temporary_storage_bytes)::bigint from duckdb_memory()"
                    ).fetchall()[0]
                    progress(
                        BatchProgress(
                            i,
                            len(plan),
                            batch.first,
                            batch.last,
                            batch.rows,
                            {n: t.num_rows for n, t in results.items()},
                            time.perf_counter() - started,
                            mem or 0,
                            tmp or 0,
                        )
                    )
                del results
            for f in writing:
                f.result()
        for name in sources:
            ddl(con, f'DROP TABLE IF EXISTS temp.main."{name}"')
        runs = []
        for name in group:
            con.unregister(f"_model_{name}")
            t0 = time.perf_counter()
            if _in_order(bounds[name]):
                written = writers[name].commit()
            else:  # e.g. ordered by (pairing, problem_id): merge the batches with one external sort
                written = _sorted_copy(lake, con, models[name], writers[name], spill_dir)
            seconds[name] += time.perf_counter() - t0
            ddl(con, f'CREATE OR REPLACE TEMP VIEW "{name}" AS SELECT * FROM read_parquet({_literal(written.uri)})')
            runs.append(ModelRun(name, None, written, seconds[name], len(plan)))
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    yield from runs


def _edge_keys(model: SqlModel, table: Any) -> tuple[tuple, tuple]:
    cols = model.order_by or ()
    missing = [c for c in cols if c not in table.column_names]
    if missing:
        raise SqlModelError(
            f"{model.name}: to run in batches its ORDER BY must name output columns; {', '.join(missing)} is not one"
        )
    return (tuple(table.column(c)[0].as_py() for c in cols), tuple(table.column(c)[-1].as_py() for c in cols))


def _in_order(bounds: list[tuple[tuple, tuple]]) -> bool:
    """Whether the batches, appended, are already sorted: each ends before the next begins."""
    try:
        return all(prev[1] < nxt[0] for prev, nxt in itertools.pairwise(bounds))
    except TypeError:  # NULLs in a sort key: let DuckDB order them
        return False


def _sorted_copy(
    lake: Lake, con: duckdb.DuckDBPyConnection, model: SqlModel, staged: TableWriter, spill_dir: str | None
) -> Written:
    staged.close()
    out = lake.table_writer(model.name, staging_dir=spill_dir)
    try:
        keys = ", ".join(f'"{c}"' for c in model.order_by or ())
        reader = con.sql(f"SELECT * FROM read_parquet({_literal(staged.staged)}) ORDER BY {keys}").fetch_record_batch(1 << 20)
        if staged.schema is not None:
            out.write(staged.schema.empty_table())
        for batch in reader:
            out.write(batch)
        written = out.commit()
    except BaseException:
        out.abort()
        raise
    staged.abort()
    return written


def run_check(con: duckdb.DuckDBPyConnection, check: SqlCheck, params: dict[str, Any] | None = None) -> pl.DataFrame:
    return con.sql(_bind(check.sql, params or {})).pl()


def _has_relation(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    rows = con.execute(
        "select count(*) from (select view_name as n from duckdb_views() union all select table_name from duckdb_tables()) where n = ?",
        [name],
    ).fetchall()
    return rows[0][0] > 0
