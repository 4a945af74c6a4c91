"""Checkpoints and Trainer state on an object-store lake: a real S3 API (moto's server on
127.0.0.1, started here), uploads published with the manifest last, downloads to a cache."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid

import polars as pl
import pytest

from tests.lakes import publish_checkpoint
from tests.pipes_files import REPO, pipes_env, reports
from widen_dag.profiles import load_profile, parse_profile
from widen_dag.storage.artifacts import (
    MANIFEST,
    ArtifactMissing,
    checkpoint_dir,
    checkpoint_location,
    checkpoint_parts,
    download_log,
    local_model,
    read_manifest,
)
from widen_dag.storage.lake import Lake


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture()
def s3_lake(s3_endpoint, monkeypatch, tmp_path) -> Lake:
    import s3fs

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_endpoint,
        "WIDEN_DAG_CACHE": str(tmp_path / "cache"),
    }.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    bucket = f"lake-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem().mkdir(bucket)
    return Lake(f"s3://{bucket}/widen")


def _profile(student: str, **train):
    data = load_profile("tiny").model_dump()
    data["models"]["student"] = {"source": "path", "name": student}
    data["train"].update({"device": "cpu", "checkpoint_every": 2, **train})
    data["train"]["sft"].update({"batch_size": 2, "epochs": 1.0, "max_length": 128, "learning_rate": 1e-3})
    data["train"]["dpo"].update({"batch_size": 2, "epochs": 1.0, "max_length": 160})
    return parse_profile(data)


def test_a_checkpoint_on_s3_is_a_lake_uri_downloaded_to_the_cache_and_loads(s3_lake, tiny_checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM

    profile = _profile(str(tiny_checkpoint))
    with pytest.raises(ArtifactMissing, match="materialize sft_checkpoint"):
        checkpoint_location(profile, s3_lake, "sft")
    publish_checkpoint(s3_lake, "sft", tiny_checkpoint, {"kind": "sft", "version": 1})
    published = checkpoint_location(profile, s3_lake, "sft")
    assert published.name_or_path == checkpoint_dir(s3_lake, "sft") and published.name_or_path.startswith("s3://")
    local = local_model(published, s3_lake)
    assert local.name_or_path.startswith(str(tmp_path / "cache"))
    AutoModelForCausalLM.from_pretrained(local.name_or_path)
    assert local_model(published, s3_lake) == local  # cached: the same manifest, no second download
    publish_checkpoint(s3_lake, "sft", tiny_checkpoint, {"kind": "sft", "version": 2})
    assert local_model(published, s3_lake).name_or_path != local.name_or_path  # republished: a fresh copy
    assert read_manifest(checkpoint_dir(s3_lake, "sft"))["version"] == 2


KILLED_UPLOAD = """
import os, shutil, signal, sys
from pathlib import Path
from widen_dag.storage import artifacts
from widen_dag.storage.lake import Lake

lake, source = Lake(sys.argv[1]), Path(sys.argv[2])
fs = lake.fs
put, uploaded = fs.put_file, []
def put_then_die(lpath, rpath, *a, **k):
    if len(uploaded) == 2:  # kill -9 after two files are on S3, before the rest and the manifest
        os.kill(os.getpid(), signal.SIGKILL)
    put(lpath, rpath, *a, **k)
    uploaded.append(rpath)
fs.put_file = put_then_die
with lake.staged_dir(*artifacts.checkpoint_parts("sft"), marker=artifacts.MANIFEST) as out:
    for f in source.iterdir():
        shutil.copy(f, out / f.name)
    artifacts.write_manifest(out, {"kind": "sft", "version": 3})
"""


def test_a_killed_upload_leaves_no_visible_checkpoint(s3_lake, tiny_checkpoint, tmp_path):
    profile = _profile(str(tiny_checkpoint))
    publish_checkpoint(s3_lake, "sft", tiny_checkpoint, {"kind": "sft", "version": 1})
    script = tmp_path / "upload.py"
    script.write_text(textwrap.dedent(KILLED_UPLOAD))
    proc = subprocess.run(
        [sys.executable, str(script), s3_lake.root, str(tiny_checkpoint)],
        cwd=REPO,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert len(s3_lake.children(*checkpoint_parts("sft"))) == 2  # half the files are there ...
    assert read_manifest(checkpoint_dir(s3_lake, "sft")) is None  # ... but no checkpoint is visible
    with pytest.raises(ArtifactMissing):
        checkpoint_location(profile, s3_lake, "sft")


def test_trainer_state_round_trips_through_s3_and_the_run_resumes_exactly(s3_lake, tiny_checkpoint, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from widen_dag.train.remote_state import lake_sync_callback, published_steps, restore_latest
    from widen_dag.train.sft import train_sft

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    rows = [
        {
            "prompt": [{"role": "user", "content": f"What is {i} + 2?"}],
            "completion": [{"role": "assistant", "content": f"<answer>{i + 2}</answer>"}],
        }
        for i in range(8)
    ]
    parts = ("trainer_state", "sft", "run")

    class Die(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt("killed at step 3")

    def run(folder, callbacks):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
        stats = train_sft(
            model,
            tok,
            rows,
            output_dir=str(folder),
            learning_rate=1e-3,
            batch_size=2,
            max_length=64,
            max_steps=4,
            checkpoint_every=2,
            callbacks=callbacks,
        )
        return model, stats

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "pod-1", [lake_sync_callback(s3_lake, parts), Die()])
    assert published_steps(s3_lake, parts) == [2]
    fresh = tmp_path / "pod-2"  # another machine: nothing local, only the lake
    assert restore_latest(s3_lake, parts, fresh) == 2
    resumed, stats = run(fresh, [lake_sync_callback(s3_lake, parts)])
    assert stats.resumed_from_step == 2 and stats.steps == 4
    assert published_steps(s3_lake, parts) == [4]  # older states are dropped as newer ones land
    straight, _ = run(tmp_path / "uninterrupted", [])
    for (name, a), b in zip(resumed.state_dict().items(), straight.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def _downloads() -> list[dict]:
    log = download_log()
    return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []


# Put on a worker's PYTHONPATH: every process waits in local_model until all N have entered it,
# so they ask for the checkpoint at one moment (uncoordinated downloads then collide every time,
# not only when start-up times happen to line up).
ASK_TOGETHER = """
import os, time
from pathlib import Path
from widen_dag.storage import artifacts

ask = artifacts.local_model
def ask_together(location, lake):
    folder, n = Path(os.environ["ASK_TOGETHER_DIR"]), int(os.environ["ASK_TOGETHER_PROCESSES"])
    (folder / str(os.getpid())).touch()
    deadline = time.monotonic() + 120
    while len(list(folder.iterdir())) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return ask(location, lake)
artifacts.local_model = ask_together
"""


def _ask_together(env: dict, tmp_path, processes: int) -> dict:
    hook = tmp_path / "ask_together"
    (hook / "arrived").mkdir(parents=True)
    (hook / "sitecustomize.py").write_text(textwrap.dedent(ASK_TOGETHER))
    return {
        **env,
        "PYTHONPATH": f"{hook}:{env['PYTHONPATH']}",
        "ASK_TOGETHER_DIR": str(hook / "arrived"),
        "ASK_TOGETHER_PROCESSES": str(processes),
    }


@pytest.mark.slow
def test_the_sft_worker_and_a_two_rank_dpo_read_and_write_an_s3_lake_downloading_the_sft_checkpoint_once(
    s3_lake, tiny_checkpoint, tmp_path
):
    from tests.test_distributed_training import write_training_data
    from widen_dag.launch import scaleout

    write_training_data(s3_lake)
    sft_profile = _profile(str(tiny_checkpoint))
    env, messages = pipes_env(tmp_path / "sft", sft_profile, s3_lake.root, "sft_checkpoint")
    env["WIDEN_DAG_CACHE"] = str(tmp_path / "cache-sft-pod")  # the SFT checkpoint then exists only in the bucket
    proc = subprocess.run(scaleout.worker_argv("train", "sft"), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert reports(messages)[0]["path"].startswith("s3://")
    assert s3_lake.children("trainer_state", "sft") == []  # removed once the checkpoint was published

    # Both ranks of one host share its cache (WIDEN_DAG_CACHE of the s3_lake fixture).
    dpo_profile = _profile(str(tiny_checkpoint), num_processes=2)
    env, messages = pipes_env(tmp_path / "dpo", dpo_profile, s3_lake.root, "dpo_checkpoint", "dpo")
    env = _ask_together(env, tmp_path, processes=2)  # both ranks ask for the SFT checkpoint at once
    argv = scaleout.worker_argv(
        "train", "dpo", "dpo", num_processes=2, accelerate_flags=scaleout.accelerate_args(dpo_profile, "train")
    )
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (meta,) = reports(messages)  # rank 0's
    assert meta["processes"] == 2 and meta["path"] == checkpoint_dir(s3_lake, "dpo-dpo")
    downloads = _downloads()
    assert [d["checkpoint"] for d in downloads] == [checkpoint_dir(s3_lake, "sft")], downloads  # one rank downloaded
    assert read_manifest(checkpoint_dir(s3_lake, "dpo-dpo"))["base"] == checkpoint_dir(s3_lake, "sft")


LOAD_CHECKPOINT = """
import hashlib, json, sys
from pathlib import Path
from widen_dag.storage import artifacts
from widen_dag.storage.lake import Lake

lake = Lake(sys.argv[1])
published = artifacts.ModelLocation(artifacts.checkpoint_dir(lake, "sft"), source="checkpoint")
folder = Path(artifacts.local_model(published, lake).name_or_path)
print(json.dumps({f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in folder.iterdir()}))
"""


@pytest.mark.slow
def test_concurrent_processes_on_one_host_download_a_checkpoint_once_and_all_read_it_complete(s3_lake, tiny_checkpoint, tmp_path):
    import hashlib
    import os

    publish_checkpoint(s3_lake, "sft", tiny_checkpoint, {"kind": "sft", "version": 1})
    script = tmp_path / "load.py"
    script.write_text(textwrap.dedent(LOAD_CHECKPOINT))
    env = _ask_together({**os.environ, "PYTHONPATH": str(REPO)}, tmp_path, processes=3)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), s3_lake.root],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    published = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in tiny_checkpoint.iterdir()}
    for out, _ in outputs:
        seen = json.loads(out)
        assert {k: v for k, v in seen.items() if k != MANIFEST} == published  # every file, whole
    assert len(_downloads()) == 1, _downloads()


@pytest.mark.slow
def test_evaluation_and_mcts_decode_run_on_checkpoints_that_exist_only_in_the_bucket(s3_lake, tiny_checkpoint):
    """Both workers load each checkpoint through the one download helper: one download per
    checkpoint on this host, whichever worker came first."""
    import logging
    from types import SimpleNamespace

    import polars as pl

    from tests.lakes import eval_problems, publish_tiny_checkpoints, tiny_checkpoint_eval_profile
    from widen_dag.workers.common import Worker
    from widen_dag.workers.decode import decode_all
    from widen_dag.workers.evaluate import evaluate_all

    profile = tiny_checkpoint_eval_profile(
        tiny_checkpoint,
        max_problems=2,
        test_at_n=1,
        greedy=False,
        mcts_decode={"variants": ["sft"], "rollouts": 1, "test_at": [1], "max_problems": 2},
    )
    publish_tiny_checkpoints(s3_lake, tiny_checkpoint)
    s3_lake.write_table("stg_problems", eval_problems(2))
    worker = Worker(SimpleNamespace(log=logging.getLogger("test")), profile, s3_lake)  # type: ignore[arg-type]

    evaluate_all(worker)
    decode_all(worker)
    evaluated = s3_lake.read_table("eval_results")
    assert set(evaluated["variant"]) == {"base", "distill_baseline", "sft", "dpo"}
    assert set(evaluated.filter(pl.col("variant") == "sft")["checkpoint"]) == {checkpoint_dir(s3_lake, "sft")}
    decoded = s3_lake.read_table("mcts_decode")
    assert set(decoded["method"]) == {"mcts", "sampled"} and decoded.height == 2 * 2
    assert set(decoded["checkpoint"]) == {checkpoint_dir(s3_lake, "sft")}  # the lake's name, not this host's cache
    assert sorted(d["checkpoint"] for d in _downloads()) == sorted(
        checkpoint_dir(s3_lake, n) for n in ("distill", "sft", "dpo-dpo")
    )


def test_a_profile_that_builds_its_base_models_fails_on_an_object_store_lake_saying_what_to_use(s3_lake, tmp_path):
    import dagster as dg

    from widen_dag.defs.assets.models import policy_model
    from widen_dag.defs.resources import PipelineResource

    s3_lake.write_table("stg_problems", pl.DataFrame({"problem_id": ["p"]}))
    res = {
        "pipeline": PipelineResource(profile="tiny", lake_root=s3_lake.root),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    }
    result = dg.materialize([policy_model], resources=res, raise_on_error=False)
    assert not result.success
    failure = result.failure_data_for_node("policy_model").error.message
    assert (
        f"a bootstrap model is built into the lake's models/ folder, which workers read from local disk, and this lake is {s3_lake.root}"
        in failure
    )
    assert "use a local lake" in failure and "source: path" in failure
    assert not s3_lake.children("models")  # failed before any worker built something there
