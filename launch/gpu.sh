#!/usr/bin/env bash
# Runs one roar_jax command on a multi-GPU machine, or on several over ssh.
#
# On one host (no --hosts) it installs jax[cuda12] and the project into the
# current Python and runs the command given after `--` from the project
# directory: one JAX process drives all local GPUs.
#
# With --hosts h1,h2,... it copies (or clones) the project onto every host,
# installs it there, and starts the command on all hosts at once, process i on
# host i, with the flags roar_jax.main needs to join them:
# --coordinator_address=h1:PORT --num_processes=N --process_id=i. Every host
# must reach h1:PORT, and every host must see the same --workdir (a shared file
# system or a gs:// bucket).
set -euo pipefail

readonly PROG="launch/gpu.sh"

usage() {
  cat <<EOF
Usage: ${PROG} [options] -- COMMAND...

Installs jax[cuda12] and roar_jax, then runs COMMAND (a roar_jax command, e.g.
python -m roar_jax.main ...) on this machine, or with --hosts on several
machines at once, one JAX process per machine.

Options:
  --hosts H1,H2,...     run on these ssh hosts ([user@]host), process i on host i;
                        H1 is the coordinator (default: this machine only)
  --port PORT           coordinator port on H1 (default: 8476)
  --source_dir DIR      the project to install (default: the checkout that holds
                        this script); copied to every host with --hosts
  --repo_url URL        with --hosts: clone this git repository on every host instead
  --branch BRANCH       branch or tag to clone with --repo_url
  --remote_dir DIR      with --hosts: project directory on each host, relative to
                        the home directory (default: roar_jax)
  --python PYTHON       interpreter that pip installs into (default: python3)
  --jax_extra EXTRA     jax extra to install (default: cuda12)
  --skip_install        do not copy or install the project
  --dry_run             print the commands, one per line; run nothing
  -h, --help            this text

Examples:
  ${PROG} -- python -m roar_jax.main --config=configs/food101_resnet50.py \\
      --workdir=/data/runs/food101 --mode=roar
  ${PROG} --hosts gpu1,gpu2 -- python -m roar_jax.main \\
      --config=configs/imagenet_resnet50.py --workdir=gs://BUCKET/imagenet --mode=roar
EOF
}

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

HOSTS="" PORT=8476 SOURCE_DIR="" REPO_URL="" BRANCH="" REMOTE_DIR="roar_jax"
PYTHON="python3" JAX_EXTRA="cuda12" SKIP_INSTALL=0 DRY_RUN=0 SAW_SEPARATOR=0

while (($#)); do
  arg=$1
  shift
  case "${arg}" in
    --) SAW_SEPARATOR=1; break ;;
    -h|--help) usage; exit 0 ;;
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
    --hosts) HOSTS=${value} ;;
    --port) PORT=${value} ;;
    --source_dir) SOURCE_DIR=${value} ;;
    --repo_url) REPO_URL=${value} ;;
    --branch) BRANCH=${value} ;;
    --remote_dir) REMOTE_DIR=${value} ;;
    --python) PYTHON=${value} ;;
    --jax_extra) JAX_EXTRA=${value} ;;
    *) die "unknown flag ${flag}" ;;
  esac
done
COMMAND=("$@")

if ((SAW_SEPARATOR == 0 || ${#COMMAND[@]} == 0)); then
  die "no command: put the roar_jax command after --"
fi
[[ ${PORT} =~ ^[0-9]+$ ]] || die "--port must be an integer, got '${PORT}'"
if [[ -n ${SOURCE_DIR} && -n ${REPO_URL} ]]; then
  die "--source_dir and --repo_url exclude each other"
fi
if [[ -n ${REPO_URL} && -z ${HOSTS} ]]; then
  die "--repo_url needs --hosts (on this machine, run the script from a checkout)"
fi
if [[ -n ${BRANCH} && -z ${REPO_URL} ]]; then
  die "--branch needs --repo_url"
fi
for arg in "${COMMAND[@]}"; do
  case "${arg}" in
    --coordinator_address*|--num_processes*|--process_id*)
      die "the command must not set ${arg%%=*}: ${PROG} adds it per host" ;;
  esac
done
if [[ -z ${REPO_URL} && -z ${SOURCE_DIR} ]]; then
  SOURCE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
fi
if [[ -n ${SOURCE_DIR} ]]; then
  [[ -f ${SOURCE_DIR}/setup.py ]] || die "--source_dir ${SOURCE_DIR} has no setup.py"
fi

jax_package="jax[${JAX_EXTRA}]"

# One machine: one process sees every local GPU; no distributed set-up.
if [[ -z ${HOSTS} ]]; then
  if ((SKIP_INSTALL == 0)); then
    run "${PYTHON}" -m pip install --upgrade "${jax_package}" -e "${SOURCE_DIR}"
  fi
  run_line "cd $(quote "${SOURCE_DIR}") && $(quote_all "${COMMAND[@]}")"
  exit 0
fi

IFS=',' read -r -a host_list <<<"${HOSTS}"
for host in "${host_list[@]}"; do
  [[ -n ${host} && ${host} != *[[:space:]]* ]] || die "--hosts has an empty or blank entry: '${HOSTS}'"
done
num_processes=${#host_list[@]}
coordinator="${host_list[0]##*@}:${PORT}"
remote_dir=$(quote "${REMOTE_DIR}")
ssh_cmd=(ssh -o BatchMode=yes)

# 1. The project on every host.
if ((SKIP_INSTALL == 0)); then
  install="cd ${remote_dir} && $(quote_all "${PYTHON}" -m pip install --upgrade "${jax_package}" -e .)"
  for host in "${host_list[@]}"; do
    if [[ -n ${REPO_URL} ]]; then
      clone=(git clone --depth 1)
      [[ -n ${BRANCH} ]] && clone+=(--branch "${BRANCH}")
      clone+=("${REPO_URL}")
      setup="if [ -d ${remote_dir}/.git ]; then git -C ${remote_dir} pull --ff-only; else $(quote_all "${clone[@]}") ${remote_dir}; fi && ${install}"
      run "${ssh_cmd[@]}" "${host}" "${setup}"
    else
      setup="mkdir -p ${remote_dir} && tar -xzf - -C ${remote_dir} && ${install}"
      run_line "$(quote_all tar -czf - --exclude=.git --exclude=__pycache__ \
        --exclude='*.egg-info' --exclude=.pytest_cache -C "${SOURCE_DIR}" .) | $(quote_all "${ssh_cmd[@]}" "${host}" "${setup}")"
    fi
  done
fi

# 2. The command, process i on host i, all at once.
pids=()
for i in "${!host_list[@]}"; do
  remote="cd ${remote_dir} && export PATH=\"\$HOME/.local/bin:\$PATH\" && $(quote_all "${COMMAND[@]}" \
    "--coordinator_address=${coordinator}" "--num_processes=${num_processes}" \
    "--process_id=${i}")"
  if ((DRY_RUN)); then
    run "${ssh_cmd[@]}" "${host_list[i]}" "${remote}"
  else
    run "${ssh_cmd[@]}" "${host_list[i]}" "${remote}" &
    pids+=("$!")
  fi
done
failed=()
for i in "${!pids[@]}"; do
  wait "${pids[i]}" || failed+=("${host_list[i]} (process ${i})")
done
if ((${#failed[@]})); then
  echo "${PROG}: error: the command failed on: ${failed[*]}" >&2
  exit 1
fi
