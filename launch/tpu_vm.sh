#!/usr/bin/env bash
# Runs one roar_jax command on every worker of a Cloud TPU VM slice.
#
# Creates the TPU VM (directly, or through a queued resource), copies or clones
# the project onto every worker, installs it there (`pip install -e .` with
# jax[tpu]) and runs the command given after `--` on all workers at once. On a
# slice with several workers (hosts) it appends --multihost, so that
# roar_jax.main calls jax.distributed.initialize(), which reads its arguments
# from the TPU metadata.
#
# Every stage of roar_jax resumes from its --workdir, so a command that was cut
# off (a lost ssh connection, a preempted spot VM) is simply run again, e.g.
# with --skip_create --skip_install.
set -euo pipefail

readonly PROG="launch/tpu_vm.sh"
readonly LIBTPU_INDEX="https://storage.googleapis.com/jax-releases/libtpu_releases.html"

usage() {
  cat <<EOF
Usage: ${PROG} --name NAME --zone ZONE --accelerator_type TYPE [options] -- COMMAND...

Creates a Cloud TPU VM, installs roar_jax on every worker and runs COMMAND
(a roar_jax command, e.g. python -m roar_jax.main ...) on all workers.

Required:
  --name NAME                TPU VM name (also the queued resource id with --queued)
  --zone ZONE                e.g. us-central2-b
  --accelerator_type TYPE    e.g. v3-8, v4-32, v5litepod-16, v5p-8, v6e-8

Options:
  --project PROJECT          Google Cloud project (default: gcloud's configured one)
  --runtime_version VERSION  TPU software version (default from the TPU generation:
                             tpu-ubuntu2204-base for v2-v4, v2-alpha-tpuv5-lite for
                             v5e, v2-alpha-tpuv5 for v5p, v2-alpha-tpuv6e for v6e)
  --queued                   request the slice as a queued resource and wait until
                             it is ACTIVE (instead of tpu-vm create)
  --spot                     spot (preemptible) capacity
  --source_dir DIR           copy this local checkout to the workers (default: the
                             checkout that holds this script)
  --repo_url URL             clone this git repository on the workers instead
  --branch BRANCH            branch or tag to clone with --repo_url
  --remote_dir DIR           project directory on the workers, relative to the
                             home directory (default: roar_jax)
  --num_workers N            hosts of the slice, when TYPE is not one this script
                             knows (it decides whether --multihost is passed)
  --poll_seconds S           queued resource polling interval (default: 60)
  --skip_create              use an existing TPU VM named NAME
  --skip_install             do not copy or install the project
  --dry_run                  print the commands, one per line; run nothing
  -h, --help                 this text

Example:
  ${PROG} --name roar-v4 --zone us-central2-b --accelerator_type v4-32 --queued \\
      -- python -m roar_jax.main --config=configs/imagenet_resnet50.py \\
         --workdir=gs://BUCKET/imagenet --mode=roar
EOF
}

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Workers (hosts) of a slice. v2-v4 and v5p count TensorCores (8 per host);
# v5e and v6e count chips: up to 8 on one host, 4 per host in larger slices.
num_workers_of() {
  local type=$1 generation size
  [[ ${type} =~ ^([a-z0-9]+)-([0-9]+)$ ]] || return 1
  generation=${BASH_REMATCH[1]}
  size=${BASH_REMATCH[2]}
  case "${generation}" in
    v2|v3|v4|v5p)
      echo $(((size + 7) / 8)) ;;
    v5litepod|v5e|v6e)
      if ((size <= 8)); then echo 1; else echo $(((size + 3) / 4)); fi ;;
    *) return 1 ;;
  esac
}

default_runtime_version() {
  case "$1" in
    v2-*|v3-*|v4-*) echo "tpu-ubuntu2204-base" ;;
    v5litepod-*|v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    *) return 1 ;;
  esac
}

NAME="" ZONE="" ACCELERATOR_TYPE="" PROJECT="" RUNTIME_VERSION=""
SOURCE_DIR="" REPO_URL="" BRANCH="" REMOTE_DIR="roar_jax" NUM_WORKERS=""
POLL_SECONDS=60 QUEUED=0 SPOT=0 SKIP_CREATE=0 SKIP_INSTALL=0 DRY_RUN=0
SAW_SEPARATOR=0

while (($#)); do
  arg=$1
  shift
  case "${arg}" in
    --) SAW_SEPARATOR=1; break ;;
    -h|--help) usage; exit 0 ;;
    --queued) QUEUED=1; continue ;;
    --spot) SPOT=1; continue ;;
    --skip_create) SKIP_CREATE=1; continue ;;
    --skip_install) SKIP_INSTALL=1; continue ;;
    --dry_run) DRY_RUN=1; continue ;;
    --*=*) flag=${arg%%=*}; value=${arg#*=} ;;
    --*)
      flag=${arg}
      if (($# == 0)) || [[ $1 == --* ]]; then die "${flag} needs a value"; fi
      value=$1
      shift ;;
    *) die "unexpected argument '${arg}' (the roar_jax command goes after --)" ;;
  esac
  case "${flag}" in
    --name) NAME=${value} ;;
    --zone) ZONE=${value} ;;
    --accelerator_type) ACCELERATOR_TYPE=${value} ;;
    --project) PROJECT=${value} ;;
    --runtime_version) RUNTIME_VERSION=${value} ;;
    --source_dir) SOURCE_DIR=${value} ;;
    --repo_url) REPO_URL=${value} ;;
    --branch) BRANCH=${value} ;;
    --remote_dir) REMOTE_DIR=${value} ;;
    --num_workers) NUM_WORKERS=${value} ;;
    --poll_seconds) POLL_SECONDS=${value} ;;
    *) die "unknown flag ${flag}" ;;
  esac
done
COMMAND=("$@")

missing=()
[[ -n ${NAME} ]] || missing+=(--name)
[[ -n ${ZONE} ]] || missing+=(--zone)
[[ -n ${ACCELERATOR_TYPE} ]] || missing+=(--accelerator_type)
((${#missing[@]} == 0)) || die "missing required flag(s): ${missing[*]}"
if ((SAW_SEPARATOR == 0 || ${#COMMAND[@]} == 0)); then
  die "no command: put the roar_jax command after --"
fi
if [[ -n ${SOURCE_DIR} && -n ${REPO_URL} ]]; then
  die "--source_dir and --repo_url exclude each other"
fi
if [[ -n ${BRANCH} && -z ${REPO_URL} ]]; then
  die "--branch needs --repo_url"
fi
[[ ${POLL_SECONDS} =~ ^[0-9]+$ ]] || die "--poll_seconds must be an integer"
if [[ -z ${RUNTIME_VERSION} ]]; then
  RUNTIME_VERSION=$(default_runtime_version "${ACCELERATOR_TYPE}") ||
    die "no default --runtime_version for --accelerator_type=${ACCELERATOR_TYPE}; pass one"
fi
if [[ -n ${NUM_WORKERS} ]]; then
  [[ ${NUM_WORKERS} =~ ^[1-9][0-9]*$ ]] || die "--num_workers must be a positive integer"
else
  NUM_WORKERS=$(num_workers_of "${ACCELERATOR_TYPE}") ||
    die "unknown --accelerator_type=${ACCELERATOR_TYPE}; pass --num_workers (hosts of the slice)"
fi
if [[ -z ${REPO_URL} && -z ${SOURCE_DIR} ]]; then
  SOURCE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
fi
if [[ -n ${SOURCE_DIR} && ${SKIP_INSTALL} == 0 ]]; then
  [[ -f ${SOURCE_DIR}/setup.py ]] || die "--source_dir ${SOURCE_DIR} has no setup.py"
fi

# A multi-host slice runs one JAX process per worker; they join through
# jax.distributed.initialize(), which roar_jax.main calls with --multihost.
if ((NUM_WORKERS > 1)); then
  has_flag=0
  for arg in "${COMMAND[@]}"; do
    [[ ${arg} == --multihost ]] && has_flag=1
  done
  ((has_flag)) || COMMAND+=(--multihost)
fi

gcloud_flags=("--zone=${ZONE}")
[[ -n ${PROJECT} ]] && gcloud_flags+=("--project=${PROJECT}")

remote_dir=$(quote "${REMOTE_DIR}")

# 1. The slice.
if ((SKIP_CREATE == 0)); then
  if ((QUEUED)); then
    create=(gcloud compute tpus queued-resources create "${NAME}"
            "--node-id=${NAME}" "--accelerator-type=${ACCELERATOR_TYPE}"
            "--runtime-version=${RUNTIME_VERSION}" "${gcloud_flags[@]}")
    ((SPOT)) && create+=(--spot)
    run "${create[@]}"
    describe=(gcloud compute tpus queued-resources describe "${NAME}"
              "--format=value(state.state)" "${gcloud_flags[@]}")
    if ((DRY_RUN)); then
      # Polled until the state is ACTIVE.
      run "${describe[@]}"
    else
      while true; do
        state=$(run "${describe[@]}")
        echo "queued resource ${NAME}: ${state}" >&2
        case "${state}" in
          ACTIVE) break ;;
          FAILED|SUSPENDING|SUSPENDED)
            echo "${PROG}: error: queued resource ${NAME} is ${state}" >&2
            exit 1 ;;
        esac
        sleep "${POLL_SECONDS}"
      done
    fi
  else
    create=(gcloud compute tpus tpu-vm create "${NAME}"
            "--accelerator-type=${ACCELERATOR_TYPE}"
            "--version=${RUNTIME_VERSION}" "${gcloud_flags[@]}")
    ((SPOT)) && create+=(--spot)
    run "${create[@]}"
  fi
fi

# 2. The project on every worker.
if ((SKIP_INSTALL == 0)); then
  if [[ -n ${REPO_URL} ]]; then
    clone=(git clone --depth 1)
    [[ -n ${BRANCH} ]] && clone+=(--branch "${BRANCH}")
    clone+=("${REPO_URL}")
    fetch="if [ -d ${remote_dir}/.git ]; then git -C ${remote_dir} pull --ff-only; else $(quote_all "${clone[@]}") ${remote_dir}; fi"
  else
    archive="${TMPDIR:-/tmp}/roar_jax_src_${NAME}.tar.gz"
    run tar -czf "${archive}" --exclude=.git --exclude=__pycache__ \
      --exclude='*.egg-info' --exclude=.pytest_cache -C "${SOURCE_DIR}" .
    run gcloud compute tpus tpu-vm scp "${archive}" "${NAME}:roar_jax_src.tar.gz" \
      --worker=all "${gcloud_flags[@]}"
    fetch="mkdir -p ${remote_dir} && tar -xzf roar_jax_src.tar.gz -C ${remote_dir} && rm -f roar_jax_src.tar.gz"
  fi
  # `python` may be missing on the TPU image (only python3): link it into
  # ~/.local/bin, where pip puts the user's scripts anyway.
  install="${fetch} && cd ${remote_dir} && python3 -m pip install --upgrade pip && python3 -m pip install --upgrade 'jax[tpu]' -f $(quote "${LIBTPU_INDEX}") -e . && mkdir -p ~/.local/bin && { command -v python >/dev/null || ln -sf \"\$(command -v python3)\" ~/.local/bin/python; }"
  run gcloud compute tpus tpu-vm ssh "${NAME}" --worker=all \
    "--command=${install}" "${gcloud_flags[@]}"
fi

# 3. The command, on all workers at once.
remote="cd ${remote_dir} && export PATH=\"\$HOME/.local/bin:\$PATH\" && $(quote_all "${COMMAND[@]}")"
run gcloud compute tpus tpu-vm ssh "${NAME}" --worker=all "--command=${remote}" \
  "${gcloud_flags[@]}"
