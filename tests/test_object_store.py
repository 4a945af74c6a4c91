"""Checkpoints and Trainer state on an object-store lake: a real S3 API (moto's server on
127.0.0.1, started here), uploads published with the manifest last, downloads to a cache."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import uuid

import pytest

from tests.pipes_files import REPO, pipes_env, reports
from widen_dag.profiles import load_profile, parse_profile
from widen_dag.storage.artifacts import (
    MANIFEST,
    ArtifactMissing,
    checkpoint_dir,
    checkpoint_location,
    checkpoint_parts,
    local_model,
    read_manifest,
    write_manifest,
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


def _profile(student: str):
    data = load_profile("tiny").model_dump()
    data["models"]["student"] = {"source": "path", "name": student}
    data["train"].update({"device": "cpu", "checkpoint_every": 2})
    data["train"]["sft"].update({"batch_size": 2, "epochs": 1.0, "max_length": 128, "learning_rate": 1e-3})
    data["train"]["dpo"].update({"batch_size": 2, "epochs": 1.0, "max_length": 160})
    return parse_profile(data)


def _publish(lake: Lake, source, manifest: dict) -> None:
    with lake.staged_dir(*checkpoint_parts("sft"), marker=MANIFEST) as out:
        for f in source.iterdir():
            shutil.copy(f, out / f.name)
        write_manifest(out, manifest)


def test_a_checkpoint_on_s3_is_a_lake_uri_downloaded_to_the_cache_and_loads(s3_lake, tiny_checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM

    profile = _profile(str(tiny_checkpoint))
    with pytest.raises(ArtifactMissing, match="materialize sft_checkpoint"):
        checkpoint_location(profile, s3_lake, "sft")
    _publish(s3_lake, tiny_checkpoint, {"kind": "sft", "version": 1})
    published = checkpoint_location(profile, s3_lake, "sft")
    assert published.name_or_path == checkpoint_dir(s3_lake, "sft") and published.name_or_path.startswith("s3://")
    local = local_model(published, s3_lake)
    assert local.name_or_path.startswith(str(tmp_path / "cache"))
    AutoModelForCausalLM.from_pretrained(local.name_or_path)
    assert local_model(published, s3_lake) == local  # cached: the same manifest, no second download
    _publish(s3_lake, tiny_checkpoint, {"kind": "sft", "version": 2})
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
    _publish(s3_lake, tiny_checkpoint, {"kind": "sft", "version": 1})
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


@pytest.mark.slow
def test_sft_and_dpo_workers_read_and_write_an_s3_lake(s3_lake, tiny_checkpoint, tmp_path):
    from tests.test_distributed_training import write_training_data
    from widen_dag.launch import scaleout

    write_training_data(s3_lake)
    profile = _profile(str(tiny_checkpoint))
    for asset, args, partition in (("sft_checkpoint", ("sft",), None), ("dpo_checkpoint", ("dpo", "dpo"), "dpo")):
        env, messages = pipes_env(tmp_path / asset, profile, s3_lake.root, asset, partition)
        env["WIDEN_DAG_CACHE"] = str(tmp_path / f"cache-{asset}")  # each worker as on its own pod
        proc = subprocess.run(scaleout.worker_argv("train", *args), env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        (meta,) = reports(messages)
        assert meta["path"].startswith("s3://")
    assert read_manifest(checkpoint_dir(s3_lake, "dpo-dpo"))["base"] == checkpoint_dir(s3_lake, "sft")
    assert s3_lake.children("trainer_state", "sft") == []  # removed once the checkpoint was published
