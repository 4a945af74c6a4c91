#!/usr/bin/env bash
# The device check on a CUDA machine without TRL/datasets and without internet.
#
#   bench/device_check.sh pack    here (online): download the wheels the GPU machine lacks into .whl/
#                                 (gitignored; carried along, under the 64 MiB limit with the repo)
#   bench/device_check.sh run     there: install .whl/ into /tmp/site (no index, no deps), then run
#                                 bench/device_check.py on CUDA; JSON on stdout and in device_check.json
#
# The GPU machines have Python 3.12, CUDA torch, transformers, accelerate, peft and tokenizers;
# TRL, datasets and datasets' own dependencies are what is packed (pinned to the versions the
# project runs with). Extra arguments after `run` go to device_check.py (e.g. --steps 10).
# On 2+ GPUs it also runs SFT under `accelerate launch` with 2 processes (--distributed fsdp) and, with
# vLLM installed, two engines on one GPU at a profile's per-model shares (--shares-profile).
set -euo pipefail
cd "$(dirname "$0")/.."

# kind name==version import-name, one per line; kind "any": a pure-Python wheel (py3-none-any).
# datasets 4.8.4 (TRL 1.16 needs >= 4.7) because it takes pyarrow 21 (43 MB), where datasets 5
# needs pyarrow >= 24 (49-55 MB): the wheels must fit the 64 MiB carried along.
WHEELS="
any trl==1.16.0 trl
any datasets==4.8.4 datasets
any dill==0.4.1 dill
any multiprocess==0.70.19 multiprocess
bin xxhash==4.1.0 xxhash
bin pyarrow==21.0.0 pyarrow
bin pandas==2.3.3 pandas
any python-dateutil==2.9.0.post0 dateutil
any pytz==2026.6 pytz
any tzdata==2026.6 tzdata
any six==1.17.0 six
any requests==2.32.5 requests
any urllib3==2.5.0 urllib3
any idna==3.10 idna
any certifi==2025.8.3 certifi
any charset-normalizer==3.4.3 charset_normalizer
"

pack() {
  mkdir -p .whl
  echo "$WHEELS" | while read -r kind spec _module; do
    [ -z "$kind" ] && continue
    if [ "$kind" = any ]; then
      python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "$spec"
    else
      python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$spec"
    fi
  done
  total=$(du -cb .whl/*.whl | tail -1 | cut -f1)
  echo "packed $(ls .whl/*.whl | wc -l) wheels, $((total / 1024 / 1024)) MiB in .whl/"
  if [ "$total" -gt $((60 * 1024 * 1024)) ]; then
    echo "device_check.sh: .whl/ is over 60 MiB; the repo and the wheels must stay under 64 MiB" >&2
    exit 1
  fi
}

run() {
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "device_check.sh: no wheels in .whl/ (run 'bench/device_check.sh pack' online first, and carry .whl)" >&2
    exit 2
  fi
  # Only what this python cannot import already: a packed wheel never shadows an installed package.
  mkdir -p .whl/use && rm -f .whl/use/*.whl
  echo "$WHEELS" | while read -r kind spec module; do
    [ -z "$kind" ] && continue
    if ! python3 -c "import $module" 2>/dev/null; then
      name=$(echo "${spec%%==*}" | tr - _); version="${spec##*==}"
      cp .whl/"$name"-"$version"-*.whl .whl/use/ 2>/dev/null || cp .whl/"${name,,}"-"$version"-*.whl .whl/use/
      echo "device_check.sh: installing $spec (no $module here)" >&2
    fi
  done
  if ls .whl/use/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/use/*.whl && export PYTHONPATH=/tmp/site
  fi
  export PYTHONPATH="${PYTHONPATH:-}"
  export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" TOKENIZERS_PARALLELISM=false
  timeout 600 python3 bench/device_check.py --device cuda --out device_check.json "$@"
}

case "${1:-}" in
  pack) pack ;;
  run) shift; run "$@" ;;
  *) echo "usage: bench/device_check.sh pack | run [device_check.py args]" >&2; exit 2 ;;
esac
