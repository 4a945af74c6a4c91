"""Finding and loading a profile: by name (``widen_dag/profiles/<name>.yaml``), by YAML path,
or from ``$WIDEN_DAG_PROFILE``; ``extends:`` chains; errors that name the file and field.

The profile is resolved once, where a run starts: workers receive the resolved profile
(``profile_to_json``/``profile_from_json``), never a name to look up again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from widen_dag.profiles.schema import Profile, ProfileError

PROFILE_DIR = Path(__file__).parent
PROFILE_ENV = "WIDEN_DAG_PROFILE"
DEFAULT_PROFILE = "tiny"
_SOURCE_TAGS = ("arithmetic", "file", "planbench", "hub")


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def _format_errors(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        # Drop pydantic's union-tag segments so the path reads like the YAML the user wrote.
        loc = ".".join(str(p) for p in e["loc"] if p not in _SOURCE_TAGS)
        lines.append(f"{loc or '<root>'}: {e['msg']}")
    return f"invalid profile {source}: " + "; ".join(lines)


def parse_profile(data: object, source: str = "<dict>") -> Profile:
    if not isinstance(data, dict):
        raise ProfileError(f"invalid profile {source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        return Profile.model_validate(data)
    except ValidationError as err:
        raise ProfileError(_format_errors(source, err)) from None


_MODEL_ROLES = ("policy", "critic", "student")
# Mappings a child profile restates whole: its ablation rows are the rows it lists.
_REPLACED_WHOLE = {("train", "dpo", "variants")}
_MODEL_IDENTITY = ("source", "name", "package")


def _replaces(path: tuple[str, ...], base: dict, override: dict) -> bool:
    """Whether the child's mapping at ``path`` replaces the parent's instead of merging into it:
    the DPO variants (the rows listed are the rows run), and a ``models.<role>`` mapping that
    names another model (source, name or package differ), whose parent settings (config_file,
    GPU share, dtype...) belong to the parent's model."""
    return path in _REPLACED_WHOLE or (
        len(path) == 2
        and path[0] == "models"
        and path[1] in _MODEL_ROLES
        and any(k in override and override[k] != base.get(k) for k in _MODEL_IDENTITY)
    )


def _merged(base: dict, override: dict, path: tuple[str, ...] = ()) -> dict:
    """``override`` on top of ``base``; mappings merge key by key, anything else is replaced,
    and so is a model mapping that names another model than the parent's."""
    out = dict(base)
    for key, value in override.items():
        here = (*path, key)
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value, here) if nested and not _replaces(here, out[key], value) else value
    return out


def _profile_data(ref: str, seen: tuple[str, ...] = ()) -> tuple[dict, Path]:
    path = Path(ref) if ref.endswith((".yaml", ".yml")) else PROFILE_DIR / f"{ref}.yaml"
    if not path.is_file():
        raise ProfileError(f"no profile {ref!r}: choose one of {', '.join(available_profiles())} or give a .yaml path")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ProfileError(f"invalid profile {path}: not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None
    if isinstance(data, dict) and "extends" in data:
        # `extends: <profile>`: this file's keys on top of another profile's (e.g. a k8s runtime).
        parent = str(data.pop("extends"))
        if parent in seen:
            raise ProfileError(f"invalid profile {path}: 'extends' cycle through {parent!r}")
        base, _ = _profile_data(parent, (*seen, ref))
        data = _merged(base, data)
    return data, path


def profile_ref(name_or_path: str | None = None) -> str:
    """Which profile is meant: the argument, else ``$WIDEN_DAG_PROFILE``, else ``tiny``; a YAML
    path is made absolute."""
    ref = name_or_path or os.environ.get(PROFILE_ENV) or DEFAULT_PROFILE
    return str(Path(ref).resolve()) if ref.endswith((".yaml", ".yml")) else ref


def load_profile(name_or_path: str | None = None) -> Profile:
    """Load a profile by name (``tiny``), by YAML path, or from ``$WIDEN_DAG_PROFILE``."""
    data, path = _profile_data(profile_ref(name_or_path))
    return parse_profile(data, str(path))


def with_run_seed(profile: Profile, seed: int | None) -> Profile:
    """The profile for one seed of a multi-seed ablation: search, training, the distillation
    data and evaluation sampling all take ``seed``; the problems, their split and the base
    models stay as the profile has them, so every seed answers the same held-out problems
    (which the paired comparisons and the across-seed spread need). None: unchanged."""
    if seed is None:
        return profile
    return profile.model_copy(
        update={
            "search": profile.search.model_copy(update={"seed": seed}),
            "train": profile.train.model_copy(update={"seed": seed}),
            "data": profile.data.model_copy(update={"distill": profile.data.distill.model_copy(update={"seed": seed})}),
            "eval": profile.eval.model_copy(update={"seed": seed}),
        }
    )


def profile_to_json(profile: Profile) -> str:
    """The resolved profile as JSON, for a worker (local or pod) to rebuild exactly."""
    return profile.model_dump_json()


def profile_from_json(text: str) -> Profile:
    return parse_profile(json.loads(text), "<resolved profile from the launching asset>")


def explain(model: type[BaseModel] = Profile, prefix: str = "") -> list[str]:
    """One line per setting: dotted name, type, default and description (``widen-dag profile --explain``)."""
    lines: list[str] = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        sub = _nested_model(field.annotation)
        if sub is not None and sub is not model:
            lines.append(f"{dotted}: {field.description or ''}")
            lines += explain(sub, dotted + ".")
            continue
        default = "(required)" if field.is_required() else json.dumps(_plain(field.default), default=str)
        if len(default) > 60:
            default = default[:57] + "..."
        lines.append(f"{dotted} = {default}: {field.description or ''}")
    return lines


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    args = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
    if len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0]
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
