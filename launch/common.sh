# Shell helpers shared by the launch scripts: errors, quoting and --dry_run.
#
# Sourced, not run. The sourcing script sets PROG (its name, for messages) and
# DRY_RUN (1: print commands instead of running them) before using them.

# Prints an error and the usage hint, and exits with status 2.
die() {
  echo "${PROG}: error: $*" >&2
  echo "Run '${PROG} --help' for usage." >&2
  exit 2
}

# Prints one argument quoted for a POSIX shell; safe words stay unquoted, and
# so does the `--flag=` prefix of a flag whose value needs quotes.
quote() {
  local arg=$1 prefix=""
  if [[ ${arg} =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "${arg}"
    return
  fi
  if [[ ${arg} =~ ^--[A-Za-z0-9_.-]+= ]]; then
    prefix=${BASH_REMATCH[0]}
    arg=${arg#"${prefix}"}
  fi
  printf "%s'%s'" "${prefix}" "${arg//\'/\'\\\'\'}"
}

# Prints all arguments quoted and joined by spaces: one shell command line.
quote_all() {
  local out="" arg
  for arg in "$@"; do
    out+="${out:+ }$(quote "${arg}")"
  done
  printf '%s' "${out}"
}

# Runs a command given as separate arguments; --dry_run only prints it.
run() {
  if [[ ${DRY_RUN} == 1 ]]; then
    quote_all "$@"
    echo
  else
    echo "+ $(quote_all "$@")" >&2
    "$@"
  fi
}

# Runs a shell command line (a pipeline); --dry_run only prints it.
run_line() {
  if [[ ${DRY_RUN} == 1 ]]; then
    echo "$1"
  else
    echo "+ $1" >&2
    bash -c "$1"
  fi
}
