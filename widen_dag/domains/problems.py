"""Loading problem shards and staging them: normalise, dedupe, split, quarantine bad rows.

``load_shard`` never raises on a bad row: an unreadable line becomes a row with
``load_error`` set, and ``stage_problems`` turns every bad row into a quarantine row with
a reason, so one broken record never stops a run.
"""

from __future__ import annotations

import dataclasses
import json
import math as _math
import os
import re
import unicodedata
from pathlib import Path
from typing import Any

import polars as pl

from widen_dag.domains import arithmetic, blocksworld, get_domain, instruction_following, synthetic
from widen_dag.domains import math as math_domain
from widen_dag.domains.base import RawRecord, problem_id
from widen_dag.profiles import INBOX_DATASET, DatasetConfig, FileSource, ProblemsConfig, Profile
from widen_dag.seeding import stable_fraction, stable_seed

RAW_SCHEMA = {
    "dataset": pl.String,
    "shard": pl.String,
    "row_index": pl.Int64,
    "domain": pl.String,
    "source_id": pl.String,
    "question": pl.String,
    "gold_raw": pl.String,
    "meta": pl.String,
    "load_error": pl.String,
}
STAGED_SCHEMA = {
    "problem_id": pl.String,
    "domain": pl.String,
    "source": pl.String,
    "shard": pl.String,
    "source_id": pl.String,
    "split": pl.String,
    "question": pl.String,
    "prompt": pl.String,
    "gold": pl.String,
    "meta": pl.String,
}
QUARANTINE_SCHEMA = {
    "dataset": pl.String,
    "shard": pl.String,
    "row_index": pl.Int64,
    "reason": pl.String,
    "question_preview": pl.String,
}


class ProblemSourceError(ValueError):
    """A problem source that cannot be read at all (missing file, wrong format)."""


def shard_key(dataset: str, index: int) -> str:
    return f"{dataset}-{index:03d}"


INBOX_KEY_PREFIX = f"{INBOX_DATASET}-"  # "inbox" is a reserved dataset name, so no shard key starts so
# What a user drops: JSON Lines, a JSON array, or Parquet, in any letter case.
INBOX_SUFFIXES = (".jsonl", ".json", ".parquet")
_INBOX_CHARS_RE = re.compile(r"^[A-Za-z0-9_.=-]+$")
_TEMP_SUFFIXES = (".tmp", ".part", ".crdownload", ".swp")


def inbox_key(filename: str) -> str:
    """The partition key of one inbox file: ``inbox-<file name>``; ValueError says why a name is refused."""
    bad = sorted({c for c in filename if not _INBOX_CHARS_RE.match(c)})
    if bad:
        raise ValueError(f"inbox file name {filename!r} holds {''.join(bad)!r}: use letters, digits and _ . = - only")
    if not filename[0].isalnum():
        # A leading '-' reads as an option to shell tools (rm -rf.jsonl); '_'/'=' lead nowhere useful.
        raise ValueError(f"inbox file name {filename!r} starts with {filename[0]!r}: start it with a letter or digit")
    if ".." in filename:
        raise ValueError(f"inbox file name {filename!r} holds '..' (two dots in a row): rename it")
    return INBOX_KEY_PREFIX + filename


def is_problem_file(name: str) -> bool:
    return name.lower().endswith(INBOX_SUFFIXES)


def inbox_files(folder: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """([(partition key, file)] of the finished problem files, by name; names refused with the reason).

    Hidden files and temporary names (a writer's name before its rename) wait silently; a
    visible file with another suffix is refused with the suffixes taken; a missing folder is
    one refusal that names it (a typo in ``inbox.path`` should not look like an empty inbox)."""
    if not folder.is_dir():
        why = "is a file, not a folder" if folder.exists() else "does not exist"
        return [], [f"inbox folder {folder} {why} (profile inbox.path or $WIDEN_DAG_INBOX); nothing to watch"]
    taken, refused = [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.name.lower().endswith(_TEMP_SUFFIXES):
            continue
        if not p.is_file():
            refused.append(f"{p.name!r} is a folder, not a problem file")
            continue
        if not is_problem_file(p.name):
            refused.append(f"{p.name!r} is not a problem file: expected {', '.join(INBOX_SUFFIXES)} (any case)")
            continue
        try:
            taken.append((inbox_key(p.name), p))
        except ValueError as err:
            refused.append(str(err))
    return taken, refused


def partition_dataset(profile: Profile, key: str) -> tuple[DatasetConfig, int]:
    """The dataset and shard index a ``problem_shards`` key stands for (profile shard or inbox file)."""
    if key.startswith(INBOX_KEY_PREFIX):
        inbox = profile.inbox
        path = inbox.resolved_path() / key[len(INBOX_KEY_PREFIX) :]
        source = FileSource(
            path=str(path), question_field=inbox.question_field, answer_field=inbox.answer_field, id_field=inbox.id_field
        )
        return DatasetConfig(name=INBOX_DATASET, domain=inbox.domain, source=source, role=inbox.role), 0
    name, index = parse_shard_key(key)
    return profile.dataset(name), index


def load_partition(profile: Profile, key: str) -> pl.DataFrame:
    """The raw rows of one ``problem_shards`` partition, with ``shard`` = the partition key."""
    dataset, index = partition_dataset(profile, key)
    return load_shard(dataset, index, profile.seed).with_columns(shard=pl.lit(key, pl.String))


def dataset_roles(profile: Profile) -> dict[str, str]:
    return {**{d.name: d.role for d in profile.datasets}, INBOX_DATASET: profile.inbox.role}


def parse_shard_key(key: str) -> tuple[str, int]:
    dataset, _, index = key.rpartition("-")
    if not dataset or not index.isdigit():
        raise ValueError(f"partition key {key!r} is not '<dataset>-<shard index>'")
    return dataset, int(index)


def _read_jsonl(path: Path) -> list[RawRecord | dict[str, Any]]:
    rows: list[RawRecord | dict[str, Any]] = []
    with path.open("rb") as fh:
        for i, raw in enumerate(fh):
            try:
                # utf-8-sig on the first line: editors on Windows start files with a BOM.
                line = raw.decode("utf-8-sig" if i == 0 else "utf-8")
            except UnicodeDecodeError as err:
                rows.append(RawRecord(i, None, None, error=f"undecodable bytes (utf-8) at byte {err.start}"))
                continue
            if not line.strip():
                rows.append(RawRecord(i, None, None, error="empty line"))
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                rows.append(RawRecord(i, None, None, error=f"invalid JSON: {err.msg} at column {err.colno}"))
    return rows


def _read_json(path: Path) -> list[RawRecord | dict[str, Any]]:
    """A ``.json`` file: one JSON array of objects, or (as many exports are) JSON Lines."""
    data = path.read_bytes()
    if not data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
        return _read_jsonl(path)
    try:
        rows = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProblemSourceError(f"problem file {path}: not a valid JSON array: {err}") from err
    return list(rows)


def _read_parquet(path: Path) -> list[Any]:
    try:
        return pl.read_parquet(path).to_dicts()
    except Exception as err:  # polars raises several kinds; none names the file
        raise ProblemSourceError(f"problem file {path}: not a readable Parquet file ({type(err).__name__}: {err})") from err


def _check_columns(path: Path, rows: list[Any], source: Any) -> None:
    """A file where no row has the configured fields is a configuration error, not bad rows."""
    dicts = [r for r in rows if isinstance(r, dict)]
    expected = [source.question_field, source.answer_field]
    if not dicts or any(all(f in r for f in expected) for r in dicts):
        return
    found = sorted({k for r in dicts[:1000] for k in r})
    raise ProblemSourceError(
        f"problem file {path}: no row has the fields {expected} (source question_field/answer_field); columns found: {found}"
    )


_ENV_VAR_RE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def source_path(path: str) -> str:
    """A source path with ``$VAR`` / ``${VAR}`` read from the environment (a profile can name a
    data folder each machine sets, e.g. ``${WIDEN_DAG_DATASETS}/gsm8k/test.jsonl``); an unset
    variable is an error naming it."""

    def value(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in os.environ:
            raise ProblemSourceError(f"problem file {path}: environment variable {name} is not set (set it, or edit the path)")
        return os.environ[name]

    return str(Path(_ENV_VAR_RE.sub(value, path)).expanduser())


def _file_records(source: Any) -> list[RawRecord]:
    path = Path(source_path(source.path))
    if not path.is_file():
        raise ProblemSourceError(f"problem file {path} does not exist (relative paths are read from {Path.cwd()})")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        rows: list[Any] = _read_parquet(path)
    elif suffix == ".jsonl":
        rows = _read_jsonl(path)
    elif suffix == ".json":
        rows = _read_json(path)
    else:
        raise ProblemSourceError(f"problem file {path}: expected .jsonl, .json or .parquet")
    _check_columns(path, rows, source)
    parsed = [r for r in rows if not isinstance(r, RawRecord)]
    mapped = iter(math_domain.records_from_rows(parsed, source.question_field, source.answer_field, source.id_field))
    out = []
    for i, r in enumerate(rows):
        rec = r if isinstance(r, RawRecord) else next(mapped)
        out.append(RawRecord(i, rec.question, rec.gold, rec.source_id, rec.meta, rec.error))
    return out[: source.limit] if source.limit else out


def _hub_rows(source: Any) -> list[dict[str, Any]]:
    """Rows of an HF dataset (hub id or local folder) through ``datasets.load_dataset``, filtered by ``where``."""
    import datasets  # only for hub sources; the embedded profiles never come here

    try:
        ds = datasets.load_dataset(source.name, source.config, split=source.split, revision=source.revision)
    except Exception as err:
        raise ProblemSourceError(
            f"hub dataset {source.name!r} (config {source.config!r}, split {source.split!r}): "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} "
            "(offline: download it and use source kind: file)"
        ) from None
    columns = list(getattr(ds, "column_names", None) or (ds[0] if len(ds) else []))
    missing = [c for c in source.where if c not in columns]
    if missing:
        raise ProblemSourceError(
            f"hub dataset {source.name!r}: no column(s) {', '.join(missing)} (columns: {', '.join(columns)})"
        )
    return [dict(r) for r in ds if all(str(r.get(k)) == v for k, v in source.where.items())]


def _hub_records(source: Any, domain: str) -> list[RawRecord]:
    rows = _hub_rows(source)
    missing = [c for c in (source.question_field, source.answer_field) if rows and c not in rows[0]]
    if missing:
        raise ProblemSourceError(
            f"hub dataset {source.name!r}: no column(s) {', '.join(missing)} (columns: {', '.join(rows[0])})"
        )
    if domain == "blocksworld":
        records = blocksworld.records_from_planbench_rows(rows, source.question_field, source.answer_field, source.id_field)
    else:
        records = math_domain.records_from_rows(rows, source.question_field, source.answer_field, source.id_field)
    return records[: source.limit] if source.limit else records


def _instruction_records(dataset: DatasetConfig, seed: int) -> list[RawRecord]:
    """Multi-IF (CSV, one record per turn) or IFEval (JSONL) rows, from a file or the hub, or
    generated (an ``arithmetic`` source)."""
    src = dataset.source
    if src.kind == "arithmetic":
        # Generated IFEval rows, seeded as an arithmetic dataset of the same name would be.
        tasks = synthetic.if_tasks(src.n_problems, dataset_seed(seed, dataset.name), src.steps, src.max_operand, src.ops)
        return instruction_following.records_from_rows([t.row(i) for i, t in enumerate(tasks)], dataset.answer_fallback)
    if src.kind == "file":
        try:
            rows = instruction_following.read_rows(source_path(src.path))
        except (OSError, ValueError) as err:
            raise ProblemSourceError(str(err)) from None
    elif src.kind == "hub":
        rows = _hub_rows(src)
    else:
        raise ProblemSourceError(f"instruction_following reads file, hub or (generated) arithmetic sources, not {src.kind!r}")
    records = instruction_following.records_from_rows(rows, dataset.answer_fallback)
    return records[: src.limit] if src.limit else records


def dataset_seed(seed: int, name: str) -> int:
    """A generated dataset's seed: the profile seed and the dataset name, so each dataset draws
    its own problems."""
    return seed * 1_000_003 + stable_seed(name)


def dataset_records(dataset: DatasetConfig, seed: int) -> list[RawRecord]:
    """The dataset's rows as raw records. A numeric set with ``answer_fallback`` records it in
    each row's meta, so the reading travels with the staged problem (and a changed setting is a
    changed row, hence re-evaluated)."""
    if dataset.domain == "instruction_following":
        return _instruction_records(dataset, seed)  # its gold carries the flag
    records = _numeric_or_plan_records(dataset, seed)
    if not dataset.answer_fallback:
        return records
    return [dataclasses.replace(r, meta={**r.meta, "answer_fallback": True}) for r in records]


def _numeric_or_plan_records(dataset: DatasetConfig, seed: int) -> list[RawRecord]:
    src = dataset.source
    if src.kind == "arithmetic":
        problems = arithmetic.generate(src.n_problems, src.steps, src.max_operand, dataset_seed(seed, dataset.name), src.ops)
        return [RawRecord(i, p.question, p.gold, meta={"steps": [s.equation() for s in p.steps]}) for i, p in enumerate(problems)]
    if src.kind == "file":
        return _file_records(src)
    if src.kind == "planbench":
        try:
            recs = blocksworld.records_from_planbench(source_path(src.path))
        except (OSError, ValueError, KeyError, TypeError) as err:  # name the file: the parser's errors do not
            raise ProblemSourceError(f"PlanBench file {src.path}: {type(err).__name__}: {err}") from err
        return recs[: src.limit] if src.limit else recs
    if src.kind == "hub":
        return _hub_records(src, dataset.domain)
    raise ProblemSourceError(f"unknown source kind {src.kind!r}")


def load_shard(dataset: DatasetConfig, shard_index: int, seed: int) -> pl.DataFrame:
    """The rows of one shard (row i goes to shard i mod shards), as ``RAW_SCHEMA``."""
    if not 0 <= shard_index < dataset.shards:
        raise ValueError(f"dataset {dataset.name!r} has {dataset.shards} shard(s); no shard {shard_index}")
    key = shard_key(dataset.name, shard_index)
    rows = []
    for rec in dataset_records(dataset, seed):
        if rec.row_index % dataset.shards != shard_index:
            continue
        rows.append(
            {
                "dataset": dataset.name,
                "shard": key,
                "row_index": rec.row_index,
                "domain": dataset.domain,
                "source_id": rec.source_id,
                "question": rec.question,
                "gold_raw": rec.gold,
                "meta": json.dumps(rec.meta, default=str, sort_keys=True),
                "load_error": rec.error,
            }
        )
    return pl.DataFrame(rows, schema=RAW_SCHEMA)


def _in_eval(pid: str, split_seed: int, eval_fraction: float) -> bool:
    return stable_fraction(split_seed, pid) < eval_fraction


def _bad_gold(gold: str) -> bool:
    try:
        return _math.isnan(float(gold)) or _math.isinf(float(gold))
    except ValueError:
        return gold.strip().lower() in ("none", "null")


NUMERIC_DOMAINS = ("math", "arithmetic")


def canonical_gold(domain_name: str, gold_raw: str) -> str:
    """The domain's normaliser, then one spelling per number ('7', '7.0' and '7.00' are '7';
    '0.50' is '0.5'; '3/6' is '1/2'), so one question cannot become two problems by its gold."""
    gold = get_domain(domain_name).normalize_gold(gold_raw)
    if domain_name not in NUMERIC_DOMAINS:
        return gold
    value = math_domain.as_number(gold)
    if value is None:
        return gold
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    while den % 2 == 0:
        den //= 2
    while den % 5 == 0:
        den //= 5
    if den == 1:  # a terminating decimal: write it as one
        digits = 0
        while (value * 10**digits).denominator != 1:
            digits += 1
        return f"{float(value):.{digits}f}" if digits <= 15 else f"{value.numerator}/{value.denominator}"
    return f"{value.numerator}/{value.denominator}"


def normalized_question(question: str) -> str:
    """The dedupe key of a question: Unicode NFKC with runs of whitespace collapsed, so a copy
    that differs only in spacing or full-width digits is the same question."""
    return " ".join(unicodedata.normalize("NFKC", question).split())


# On duplicates the copy that is held out wins: a benchmark never shrinks because a training
# file (or an inbox drop) repeats one of its problems. Then eval datasets before split ones.
_ROLE_RANK = {"eval": 0, "split": 1, "train": 2}


def stage_problems(raw: pl.DataFrame, cfg: ProblemsConfig, roles: dict[str, str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(staged problems, quarantine). Bad rows are quarantined with a reason, never raised.

    Dedupe is by (domain, normalised question) after the gold is canonical: copies with one
    gold keep the eval copy if any (else the first), and a question with conflicting golds is
    quarantined in every copy with both values, since neither can be trusted."""
    quarantine: list[dict[str, Any]] = []
    by_source: dict[tuple[str, str], str] = {}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def reject(row: dict[str, Any], reason: str) -> None:
        q = row.get("question") or ""
        quarantine.append(
            {
                "dataset": row["dataset"],
                "shard": row["shard"],
                "row_index": row["row_index"],
                "reason": reason,
                "question_preview": q[:120],
            }
        )

    for order, row in enumerate(raw.sort(["dataset", "row_index"]).iter_rows(named=True)):
        if row["load_error"]:
            reject(row, row["load_error"])
            continue
        question, gold_raw = row["question"], row["gold_raw"]
        if question is None or not question.strip():
            reject(row, "empty question")
            continue
        if len(question) > cfg.max_question_chars:
            reject(row, f"question of {len(question)} characters is over max_question_chars={cfg.max_question_chars}")
            continue
        if "\ufffd" in question:
            reject(row, "question holds undecodable bytes (U+FFFD)")
            continue
        if gold_raw is None or not gold_raw.strip():
            reject(row, "empty gold answer")
            continue
        if len(gold_raw) > max(cfg.max_gold_chars, 20_000) or _bad_gold(gold_raw):
            reject(row, f"gold answer does not parse: {gold_raw[:40]!r}")
            continue
        try:
            gold = canonical_gold(row["domain"], gold_raw)
        except ValueError as err:
            reject(row, f"gold answer does not parse: {err}")
            continue
        if len(gold) > cfg.max_gold_chars or _bad_gold(gold):
            reject(row, f"gold answer does not parse: {gold[:40]!r}")
            continue
        pid = problem_id(row["domain"], question, gold)
        source_key = (row["dataset"], row["source_id"]) if row["source_id"] is not None else None
        if source_key and source_key in by_source and by_source[source_key] != pid:
            reject(row, f"duplicate source id {row['source_id']!r} with different content")
            continue
        if source_key:
            by_source[source_key] = pid
        role = roles.get(row["dataset"], "split")
        split = role if role != "split" else ("eval" if _in_eval(pid, cfg.split_seed, cfg.eval_fraction) else "train")
        key = (row["domain"], normalized_question(question))
        groups.setdefault(key, []).append({"row": row, "order": order, "pid": pid, "gold": gold, "split": split, "role": role})

    kept: list[dict[str, Any]] = []
    for copies in groups.values():
        golds = list(dict.fromkeys(c["gold"] for c in copies))
        if len(golds) > 1:
            where = "; ".join(f"{c['gold']!r} in {c['row']['shard']} row {c['row']['row_index']}" for c in copies[:6])
            for c in copies:
                reject(c["row"], f"conflicting gold answers for one question: {where}")
            continue
        best = min(copies, key=lambda c: (c["split"] != "eval", _ROLE_RANK.get(c["role"], 3), c["order"]))
        kept.append(best)
        for c in copies:
            if c is not best:
                reject(c["row"], f"duplicate of {best['pid']} (kept the copy in {best['row']['shard']}, split {best['split']})")
    staged = [
        {
            "problem_id": c["pid"],
            "domain": c["row"]["domain"],
            "source": c["row"]["dataset"],
            "shard": c["row"]["shard"],
            "source_id": c["row"]["source_id"],
            "split": c["split"],
            "question": c["row"]["question"],
            "prompt": get_domain(c["row"]["domain"]).task_prompt(c["row"]["question"]),
            "gold": c["gold"],
            "meta": c["row"]["meta"],
        }
        for c in sorted(kept, key=lambda c: c["order"])
    ]
    quarantine.sort(key=lambda r: (r["dataset"], r["row_index"]))
    return pl.DataFrame(staged, schema=STAGED_SCHEMA), pl.DataFrame(quarantine, schema=QUARANTINE_SCHEMA)


def train_eval_overlap(staged: pl.DataFrame) -> pl.DataFrame:
    """Staged rows whose problem id or normalised question is in both train and eval (must be none)."""
    if staged.is_empty():
        return staged.with_columns(pl.lit(None, pl.String).alias("overlap_on"))
    df = staged.with_columns(pl.col("question").map_elements(normalized_question, return_dtype=pl.String).alias("_norm_q"))
    out = []
    for col in ("problem_id", "_norm_q"):
        both = df.group_by(col).agg(pl.col("split").n_unique().alias("_n")).filter(pl.col("_n") > 1)[col]
        out.append(
            df.filter(pl.col(col).is_in(both.implode())).with_columns(
                pl.lit("problem_id" if col == "problem_id" else "normalised question").alias("overlap_on")
            )
        )
    return pl.concat(out).drop("_norm_q").unique(subset=["problem_id", "shard", "split", "overlap_on"], maintain_order=True)


def unusable_sources(raw: pl.DataFrame, quarantine: pl.DataFrame) -> list[str]:
    """One line per partition that had rows but none usable for a reason other than being a
    duplicate: the run must not stay green on a file that was 100% refused."""
    out = []
    for (shard,), rows in raw.group_by("shard", maintain_order=True):
        q = quarantine.filter(pl.col("shard") == shard)
        own = q.filter(~pl.col("reason").str.starts_with("duplicate of "))
        if rows.height and q.height == rows.height and own.height:
            top = own.group_by("reason").len().sort("len", descending=True).head(3)
            reasons = "; ".join(f"{r} ({n} rows)" for r, n in top.iter_rows())
            out.append(f"{shard}: all {rows.height} rows quarantined, e.g. {reasons}")
    return out
