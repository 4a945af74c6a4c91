"""Model assets: the search policy and the student base, built or named by the profile."""

import dagster as dg

from widen_dag.defs.resources import PipelineResource
from widen_dag.defs.workers import SHARED_CORES_POOL, run_or_reuse, run_worker, unrecoverable_failure
from widen_dag.launch.failures import Unrecoverable
from widen_dag.llm import gguf
from widen_dag.profiles import Profile
from widen_dag.storage.artifacts import bootstrap_dir, check_model_available, gguf_dir, gguf_file, gguf_roles, resolve_model
from widen_dag.storage.lake import Lake, file_sha256


def _named(
    context: dg.AssetExecutionContext,
    pipeline: PipelineResource,
    client: dg.PipesSubprocessClient,
    profile: Profile,
    lake: Lake,
    which: str,
) -> dg.MaterializeResult:
    """A hub or local model: resolved here (hub reachable, or files present), so a typo or a
    missing network fails this asset once, not the search hours later."""
    roles = (
        [("policy", "models.policy")] + ([("critic", "models.critic")] if profile.models.critic else [])
        if which == "policy"
        else [("student", "models.student")]
    )
    for role, field in roles:
        location = resolve_model(profile, lake, role, require=False)  # type: ignore[arg-type]
        if location.source in ("bootstrap", "gguf"):  # built by this asset (bootstrap, conversion), not named
            continue
        try:
            check_model_available(location, field)
        except Unrecoverable as err:
            raise unrecoverable_failure(f"{which} model", err.cause, err.fix) from None
    return run_worker(context, pipeline, client, "models", which)


def _gguf(context, pipeline, client, profile: Profile, lake: Lake, which: str) -> dg.MaterializeResult:
    """GGUF models: the file is found here (package installed or wheel/file present), so a
    missing install fails this asset with what to run; the worker converts it once, and a file
    with the same sha256 converted by the same converter is reused."""
    roles = gguf_roles(profile, which)
    shas, present = {}, True
    for role, field, ref in roles:
        try:
            path = gguf_file(ref, field)
        except Unrecoverable as err:
            raise unrecoverable_failure(f"{which} model", err.cause, err.fix) from None
        shas[role] = file_sha256(path)
        present = present and gguf.is_converted(gguf_dir(lake, ref), shas[role], ref.dtype)
    if which == "policy" and profile.models.policy.source != "gguf":
        return _named(context, pipeline, client, profile, lake, which)  # converts the GGUF critic too
    config = {"refs": {role: ref.model_dump() for role, _, ref in roles}, "converter": gguf.CONVERTER_VERSION}
    return run_or_reuse(context, pipeline, client, "models", which, inputs=shas, config=config, artifact_present=present)


def _bootstrap(context, pipeline, client, which: str, inputs: dict) -> dg.MaterializeResult:
    profile, lake = pipeline.load_profile(), pipeline.lake()
    ref = profile.models.policy if which == "policy" else profile.models.student
    built = [r for r in (ref, profile.models.critic if which == "policy" else None) if r and r.source in ("bootstrap", "gguf")]
    if built and not lake.is_local:
        # Workers load base models from a local folder; only checkpoints are downloaded from object storage.
        raise unrecoverable_failure(
            f"{which} model",
            f"a {built[0].source} model is built into the lake's models/ folder, which workers read from local "
            f"disk, and this lake is {lake.root}",
            "use a local lake (or one mounted on every node) for profiles that bootstrap or convert their base models, "
            "or convert once on a local lake and name the folder with source: path",
        )
    if gguf_roles(profile, which):
        return _gguf(context, pipeline, client, profile, lake, which)
    if ref.source != "bootstrap":
        return _named(context, pipeline, client, profile, lake, which)
    config = {
        "ref": ref.model_dump(),
        "bootstrap": profile.models.bootstrap.model_dump(),
        "seed": profile.seed,
        "device": profile.train.device,
        "eval_backend": profile.eval.backend,
        "generation": profile.generation.model_dump(),
    }
    present = (bootstrap_dir(lake, which) / "config.json").is_file()
    return run_or_reuse(context, pipeline, client, "models", which, inputs=inputs, config=config, artifact_present=present)


@dg.asset(
    group_name="models",
    kinds={"pytorch", "vllm"},
    code_version="policy_model-v1",
    **SHARED_CORES_POOL,
    deps=["stg_problems"],
    retry_policy=dg.RetryPolicy(max_retries=1, delay=5),
)
def policy_model(
    context: dg.AssetExecutionContext, pipeline: PipelineResource, pipes_subprocess_client: dg.PipesSubprocessClient
) -> dg.MaterializeResult:
    """The policy that writes the search's thoughts. Tiny profile: a tokenizer and a ~1M-parameter
    Llama trained here with TRL SFT on synthetic tagged arithmetic solutions (wrong steps
    included, caught by double-checks and reflections); metadata holds its held-out
    single-sample accuracy and well-formed rate. Rebuilt only when the staged problems (kept
    out of its training set), its configuration or its code changed; otherwise reused.
    Real profiles: the named HF model, checked to be reachable (or present) here."""
    lake = pipeline.lake()
    return _bootstrap(context, pipeline, pipes_subprocess_client, "policy", {"stg_problems": lake.table_sha256("stg_problems")})


@dg.asset(
    group_name="models",
    kinds={"pytorch", "vllm"},
    code_version="student_base-v2",
    **SHARED_CORES_POOL,
    deps=["stg_problems"],
    retry_policy=dg.RetryPolicy(max_retries=1, delay=5),
)
def student_base(
    context: dg.AssetExecutionContext, pipeline: PipelineResource, pipes_subprocess_client: dg.PipesSubprocessClient
) -> dg.MaterializeResult:
    """The student before post-training. Tiny profile: the policy's architecture and tokenizer
    (trained here from the same texts, so it needs nothing from policy_model and trains beside
    it), trained briefly on plain untagged solutions, so the training stages have something to
    improve (reused like the policy). Real profiles: the named HF model, checked here."""
    lake = pipeline.lake()
    return _bootstrap(context, pipeline, pipes_subprocess_client, "student", {"stg_problems": lake.table_sha256("stg_problems")})
