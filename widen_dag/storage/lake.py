"""Where the pipeline's data lives: one Parquet file per (asset, partition) under a root URI.

The root is a local folder by default and any fsspec URI (``s3://bucket/prefix``,
``memory://x`` in tests) at scale; every read and write goes through the same fsspec code.
Writes are atomic: the bytes go to a hidden temporary name first and are renamed into
place, so a crash mid-write never leaves a file that looks complete. For a local root a
DuckDB catalog file (``<root>/widen_lake.duckdb``) keeps one view per asset, so
``duckdb lake/widen_lake.duckdb -c 'select * from stg_problems'`` queries any stage.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import fsspec
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

CATALOG_FILE = "widen_lake.duckdb"
UNPARTITIONED = "__all__"
PUBLISHED_MARKER = "_PUBLISHED"  # written last into a staged folder that names no marker of its own
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PARTITION_RE = re.compile(r"^[A-Za-z0-9_.=-]+$")


class LakeError(RuntimeError):
    """A lake path or name that cannot be used."""


def file_sha256(path: Path) -> str:
    """A local file's sha256, read in 1 MiB chunks (model files do not fit in memory twice)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_name(asset: str) -> str:
    if not _NAME_RE.match(asset):
        raise LakeError(f"asset name {asset!r} is not a valid identifier (letters, digits, _)")
    return asset


def _check_partition(partition: str | None) -> str:
    key = UNPARTITIONED if partition is None else partition
    if not _PARTITION_RE.match(key):
        raise LakeError(f"partition key {key!r} may only hold letters, digits, '_', '-', '.', '='")
    return key


@dataclass(frozen=True)
class Written:
    """What a write produced: where, a content hash (the asset's data version), how many rows."""

    uri: str
    sha256: str
    rows: int


@dataclass(frozen=True)
class Lake:
    """Maps (asset, partition) to Parquet paths under ``root`` and writes them atomically."""

    root: str

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        fs, _ = fsspec.core.url_to_fs(self.root)
        return fs

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    @property
    def _base(self) -> str:
        _, path = fsspec.core.url_to_fs(self.root)
        return path.rstrip("/")

    def uri(self, *parts: str) -> str:
        """A full URI (with protocol) for a path below the root, as DuckDB and users see it."""
        path = "/".join([self._base, *parts])
        protocol = self.fs.protocol
        protocol = protocol[0] if isinstance(protocol, (tuple, list)) else protocol
        return path if protocol in ("file", "local") else f"{protocol}://{path.lstrip('/')}"

    def _path(self, *parts: str) -> str:
        return "/".join([self._base, *parts])

    # ---- tables -------------------------------------------------------------------------
    def table_path(self, asset: str, partition: str | None = None) -> str:
        return self._path(_check_name(asset), f"{_check_partition(partition)}.parquet")

    def table_uri(self, asset: str, partition: str | None = None) -> str:
        return self.uri(_check_name(asset), f"{_check_partition(partition)}.parquet")

    def write_table(self, asset: str, df: pl.DataFrame, partition: str | None = None) -> Written:
        """Write ``df`` as the (asset, partition) Parquet file atomically."""
        buf = io.BytesIO()
        df.write_parquet(buf, compression="zstd", statistics=True)
        data = buf.getvalue()
        self.write_bytes(self.table_path(asset, partition), data)
        self.refresh_catalog(asset)
        return Written(self.table_uri(asset, partition), hashlib.sha256(data).hexdigest(), df.height)

    def table_writer(self, asset: str, partition: str | None = None, staging_dir: str | None = None) -> TableWriter:
        """A Parquet writer for tables too large to hold in memory: append Arrow batches, then
        ``commit()`` publishes the file atomically (or ``abort()`` drops it). See TableWriter."""
        return TableWriter(self, asset, partition, staging_dir)

    def table_sha256(self, asset: str, partition: str | None = None) -> str | None:
        """Content hash of a written table (the same hash write_table returned), None if absent."""
        path = self.table_path(asset, partition)
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()

    def has_table(self, asset: str, partition: str | None = None) -> bool:
        return self.fs.exists(self.table_path(asset, partition))

    def partitions(self, asset: str) -> list[str]:
        """Partition keys with a committed file (temporary files are never listed)."""
        folder = self._path(_check_name(asset))
        if not self.fs.exists(folder):
            return []
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(folder, detail=False)]
        return sorted(n[: -len(".parquet")] for n in names if n.endswith(".parquet") and not n.startswith("."))

    def read_table(self, asset: str, partition: str | None = None) -> pl.DataFrame:
        path = self.table_path(asset, partition)
        if not self.fs.exists(path):
            raise LakeError(f"{asset}[{_check_partition(partition)}] has not been written to {self.uri()}")
        with self.fs.open(path, "rb") as fh:
            return pl.read_parquet(fh)

    def read_all(self, asset: str, partitions: list[str] | None = None) -> pl.DataFrame:
        """All (or the named) partitions of an asset, concatenated."""
        keys = self.partitions(asset) if partitions is None else partitions
        if not keys:
            raise LakeError(f"{asset} has no partitions in {self.uri()}")
        return pl.concat([self.read_table(asset, k) for k in keys], how="diagonal_relaxed")

    # ---- raw files and folders ------------------------------------------------------------
    def dir_path(self, *parts: str) -> str:
        return self._path(*parts)

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write to a hidden sibling, then rename: readers never see a partial file."""
        fs = self.fs
        parent, name = path.rsplit("/", 1)
        fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex}"
        try:
            with fs.open(tmp, "wb") as fh:
                fh.write(data)
            if isinstance(fs, LocalFileSystem):
                os.replace(tmp, path)  # atomic on POSIX
            else:
                fs.mv(tmp, path)  # object stores: the PUT of the final key is itself atomic
        finally:
            with contextlib.suppress(FileNotFoundError):
                if fs.exists(tmp):
                    fs.rm(tmp)

    @contextlib.contextmanager
    def staged_dir(self, *parts: str, marker: str | None = None) -> Iterator[Path]:
        """A local folder to fill (e.g. a checkpoint); published under ``parts`` only on success.

        Local lake: the final folder appears in one rename, so a crash mid-save leaves at most a
        hidden ``.staging-*`` folder, never a checkpoint that looks complete. Object storage
        (no folder rename there): the folder is filled on local disk, then the previous
        version's ``marker`` is deleted first (it stops being visible), its files removed, every
        new file uploaded, and ``marker`` (a file the caller wrote, e.g. the checkpoint
        manifest; default: an empty ``_PUBLISHED``) uploaded last. Readers treat a prefix
        without its marker as absent, so a killed upload is never visible.
        """
        if not self.is_local:
            with tempfile.TemporaryDirectory(prefix="widen-stage-") as scratch:
                yield Path(scratch)
                self.publish_folder(Path(scratch), *parts, marker=marker or PUBLISHED_MARKER)
            return
        final = Path(self._path(*parts))
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = final.parent / f".staging-{final.name}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            yield staging
            if final.exists():
                trash = final.parent / f".trash-{final.name}-{uuid.uuid4().hex[:8]}"
                final.rename(trash)
                staging.rename(final)
                _rmtree(trash)
            else:
                staging.rename(final)
        finally:
            if staging.exists():
                _rmtree(staging)

    def publish_folder(self, staging: Path, *parts: str, marker: str = PUBLISHED_MARKER) -> None:
        """Upload a complete local folder under ``parts`` of an object-store lake, ``marker`` last
        (see ``staged_dir``); the default marker is created here."""
        final = self._path(*parts)
        if marker == PUBLISHED_MARKER:
            (staging / marker).touch()
        if not (staging / marker).is_file():
            raise LakeError(
                f"cannot publish {final}: the staged folder has no {marker} (written last, it marks the folder complete)"
            )
        fs = self.fs
        if fs.exists(f"{final}/{marker}"):
            fs.rm(f"{final}/{marker}")  # the old version disappears before any of its files change
        if fs.exists(final):
            fs.rm(final, recursive=True)
        files = sorted(f for f in staging.rglob("*") if f.is_file() and f.relative_to(staging).as_posix() != marker)
        for f in files:
            fs.put_file(str(f), f"{final}/{f.relative_to(staging).as_posix()}")
        fs.put_file(str(staging / marker), f"{final}/{marker}")

    def fresh(self, *parts: str) -> fsspec.AbstractFileSystem:
        """The filesystem with its listing cache for ``parts`` dropped: object-store clients
        (s3fs) cache listings, and another process (a worker, a pod) may have published since."""
        fs = self.fs
        if not isinstance(fs, LocalFileSystem):
            fs.invalidate_cache(self._path(*parts))
        return fs

    def is_published(self, *parts: str, marker: str = PUBLISHED_MARKER) -> bool:
        """Whether a staged folder was published completely: its marker exists (on a local lake,
        where publishing is one rename, the folder itself is enough for the default marker)."""
        if self.is_local and marker == PUBLISHED_MARKER:
            return Path(self._path(*parts)).is_dir()
        return self.fresh(*parts).exists(self._path(*parts, marker))

    def children(self, *parts: str) -> list[str]:
        """Names of the entries directly under ``parts`` (none when it does not exist)."""
        folder = self._path(*parts)
        fs = self.fresh(*parts)
        if not fs.exists(folder):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False))

    def remove_dir(self, *parts: str) -> None:
        folder = self._path(*parts)
        if self.fs.exists(folder):
            self.fs.rm(folder, recursive=True)

    def download_dir(self, *parts: str, dest: Path) -> Path:
        """Copy the folder under ``parts`` to ``dest`` on local disk (through a hidden sibling
        and one rename, so a killed download leaves no folder that looks complete)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".download-{dest.name}-{uuid.uuid4().hex[:8]}"
        src = self._path(*parts)
        fs = self.fresh(*parts)
        try:
            for remote in fs.find(src):
                rel = remote[len(src) :].lstrip("/")
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(remote, str(target))
            if dest.exists():
                _rmtree(dest)
            tmp.rename(dest)
        finally:
            if tmp.exists():
                _rmtree(tmp)
        return dest

    # ---- DuckDB ---------------------------------------------------------------------------
    def assets(self) -> list[str]:
        if not self.fs.exists(self._base):
            return []
        out = []
        for p in self.fs.ls(self._base, detail=False):
            name = p.rstrip("/").rsplit("/", 1)[-1]
            if _NAME_RE.match(name) and self.partitions(name):
                out.append(name)
        return sorted(out)

    def view_sql(self, asset: str) -> str:
        glob = self.uri(_check_name(asset), "*.parquet")
        return f"CREATE OR REPLACE VIEW \"{asset}\" AS SELECT * FROM read_parquet('{glob}', union_by_name = true)"

    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with one view per asset written so far."""
        con = duckdb.connect()
        if not self.is_local:
            con.register_filesystem(self.fs)
        for asset in self.assets():
            ddl(con, self.view_sql(asset))
        return con

    @property
    def catalog_path(self) -> Path | None:
        return Path(self._path(CATALOG_FILE)) if self.is_local else None

    def refresh_catalog(self, asset: str | None = None) -> None:
        """Keep the on-disk DuckDB catalog's views in step with what was written."""
        path = self.catalog_path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        names = [asset] if asset else self.assets()
        for attempt in range(50):  # another process may hold the file's write lock briefly
            try:
                with duckdb.connect(str(path)) as con:
                    for name in names:
                        ddl(con, self.view_sql(name))
                return
            except duckdb.IOException:
                time.sleep(0.1 * (attempt + 1))
        raise LakeError(f"could not update the DuckDB catalog {path}: it stayed locked")


class TableWriter:
    """Streams Arrow batches into one (asset, partition) Parquet file, row groups in the order
    written, and publishes it the way write_table does: nothing is visible under the table's
    name until ``commit()`` renames the finished file into place.

    A local lake stages the file as a hidden sibling (the rename is then atomic); a remote one
    stages it in ``staging_dir`` (a local folder, default the system's) and uploads on commit.
    Files read back like write_table's (zstd, statistics); their bytes differ (pyarrow writes them).
    """

    def __init__(self, lake: Lake, asset: str, partition: str | None = None, staging_dir: str | None = None) -> None:
        self.lake, self.asset, self.partition = lake, asset, partition
        self.final = lake.table_path(asset, partition)
        parent, name = self.final.rsplit("/", 1)
        if lake.is_local:
            os.makedirs(parent, exist_ok=True)
            self.staged = f"{parent}/.{name}.tmp-{uuid.uuid4().hex}"
        else:
            self.staged = str(Path(staging_dir or tempfile.gettempdir()) / f".{asset}-{name}.tmp-{uuid.uuid4().hex}")
        self.rows = 0
        self._schema: pa.Schema | None = None
        self._writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table | pa.RecordBatch) -> None:
        if self._schema is None:
            self._schema = table.schema
        if table.num_rows == 0:
            return
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.staged, self._schema, compression="zstd", write_statistics=True)
        self._writer.write(table)
        self.rows += table.num_rows

    @property
    def schema(self) -> pa.Schema | None:
        return self._schema

    def close(self) -> None:
        """Finish the staged file (readable at ``staged``) without publishing it."""
        if self._writer is None:  # no rows: still a valid, empty table with the columns
            if self._schema is None:
                raise LakeError(f"{self.asset}: nothing was written, not even a schema")
            self._writer = pq.ParquetWriter(self.staged, self._schema, compression="zstd", write_statistics=True)
        self._writer.close()

    def commit(self) -> Written:
        self.close()
        sha256 = file_sha256(Path(self.staged))
        fs = self.lake.fs
        try:
            if self.lake.is_local:
                os.replace(self.staged, self.final)  # atomic on POSIX
            else:
                parent, name = self.final.rsplit("/", 1)
                remote_tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex}"
                fs.put_file(self.staged, remote_tmp)
                try:
                    fs.mv(remote_tmp, self.final)
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        if fs.exists(remote_tmp):
                            fs.rm(remote_tmp)
        finally:
            self.abort()
        self.lake.refresh_catalog(self.asset)
        return Written(self.lake.table_uri(self.asset, self.partition), sha256, self.rows)

    def abort(self) -> None:
        """Drop the staged file (after a failure); the published table, if any, is untouched."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.staged)


def ddl(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Run a statement to completion (DuckDB 2 keeps an unfetched result open otherwise)."""
    con.execute(sql).fetchall()


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def default_lake_root() -> str:
    """``$WIDEN_DAG_LAKE`` or ``./lake`` (gitignored) in the working directory."""
    return os.environ.get("WIDEN_DAG_LAKE") or str(Path.cwd() / "lake")
