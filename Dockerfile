# The worker image of `runtime.kind: k8s` (set runtime.k8s.image to where you push it):
#   docker build -t <registry>/widen-dag:<tag> .
# Its user, working directory, cache paths and volumes are the ones widen_dag/launch/scaleout.py's
# pod spec uses (runAsUser/runAsGroup 1000, workingDir, HF_HOME, WIDEN_DAG_CACHE);
# tests/test_k8s_image.py fails when the two drift apart. Pods run `python -m widen_dag.workers.<stage>`
# (training under `python -m widen_dag.launch.accelerate_launch`), found on PATH in /opt/venv.
FROM nvidia/cuda:12.9.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Python 3.12 with headers (Triton and DeepSpeed compile kernels at run time), git for hub revisions.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# The package with the GPU (vllm, deepspeed) and Kubernetes/S3 (dagster-k8s, s3fs) extras, installed
# (not editable): workers find their accelerate configs and profiles inside the installed package.
COPY pyproject.toml README.md /src/
COPY widen_dag /src/widen_dag
RUN pip install "/src[gpu,k8s]" && rm -rf /src

# The non-root user of the pod spec. Ubuntu 24.04 images ship a user `ubuntu` with uid 1000: replace it.
RUN (userdel --remove ubuntu 2>/dev/null || true) \
    && groupadd --gid 1000 widen \
    && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/widen --shell /bin/bash widen \
    && mkdir -p /workspace /cache/huggingface /cache/widen_dag/trainer_state \
    && chown -R 1000:1000 /workspace /cache

ENV HOME=/home/widen \
    HF_HOME=/cache/huggingface \
    WIDEN_DAG_CACHE=/cache/widen_dag \
    TOKENIZERS_PARALLELISM=false

# Model cache, checkpoints downloaded from the lake, resumable Trainer state: the pod spec mounts
# an emptyDir or a PersistentVolumeClaim (runtime.k8s.volume_claims) on each.
VOLUME ["/cache/huggingface", "/cache/widen_dag", "/cache/widen_dag/trainer_state"]

USER 1000:1000
WORKDIR /workspace
