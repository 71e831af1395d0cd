r"""roar_jax command line: one stage of the pipeline per --mode.

  python -m roar_jax.main --config=configs/toy.py --workdir=/tmp/roar_toy \
      --mode=train

--config takes a config file or the name of one in the package's configs/
(`--config=toy` from any directory). Modes: train (the base model), explain
(saliency maps -> rank store), roar (everything, up to the report), metrics
(the no-retrain metrics and the mask-leakage probe), report (rebuild the report
from the results), sanity (the sanity checks). Every mode reads and writes
under --workdir and can be interrupted and rerun: finished work is skipped.
"""

import copy
import logging as pylogging
import os
import re
import sys
import traceback

# TensorFlow serves only tf.data here: keep its C++ start-up notices (oneDNN,
# CPU features) off the console, so that errors stay one line.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from roar_jax import config as config_pkg  # noqa: E402
from roar_jax.config import defaults as config_defaults  # noqa: E402
from roar_jax import hints  # noqa: E402
from roar_jax import workdir as workdir_lib  # noqa: E402
from roar_jax import workdir_lock  # noqa: E402

# Each --mode and what it runs (--help lists them from here).
MODES = {
    "train": "the base model",
    "explain": "saliency maps of every image -> rank store",
    "roar": "everything, up to the report",
    "metrics": "the no-retrain metrics and the mask-leakage probe",
    "report": "rebuild the report from the results",
    "sanity": "the sanity checks",
    "finetune_fidelity": "metrics, and deletion on a fine-tuned base model",
}

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, or the name of one in the "
    "package's configs/ (e.g. toy).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for all outputs.")
_MODE = flags.DEFINE_enum(
    "mode", "train", list(MODES), "Which stage to run: " + "; ".join(
        f"{mode}: {what}" for mode, what in MODES.items()) + ".")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False,
    "Call jax.distributed.initialize() with auto-detected arguments (Cloud "
    "TPU VMs, SLURM, Kubernetes).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0, for several processes without auto-detection "
    "(GPU hosts, or several processes on one CPU machine).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "Number of JAX processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "This process's id in [0, num_processes).")
_RECOMPUTE = flags.DEFINE_bool(
    "recompute", False,
    "Move the workdir's artifacts that another config made aside (to "
    "W/stale/) and compute them anew, instead of stopping.")
flags.mark_flags_as_required(["config", "workdir"])


def _local_cpu_device_count() -> int:
  """Local CPU devices the JAX CPU client will create (before it exists)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.config.jax_num_cpu_devices > 0:
    return int(jax.config.jax_num_cpu_devices)
  match = re.search(r"--xla_force_host_platform_device_count=(\d+)",
                    os.environ.get("XLA_FLAGS", ""))
  return int(match.group(1)) if match else 1


def _reserve_cpu_threads():
  """Sizes the CPU client's thread pools for gloo collectives.

  The client runs each local device's share of a program on a pool of
  max(cores, local devices) threads, and a device blocked in a gloo
  collective holds its thread until every process arrives. With asynchronous
  dispatch, step k+1 is launched while step k still runs, so on a machine
  with fewer cores than devices every thread can end up waiting for one that
  has no thread to run on: both processes hang in their first train steps.
  Four threads per local device leave room for two overlapping launches and
  their completion callbacks. `PJRT_NPROC`, read when the client is created,
  sets the pool size; a value the user set is kept.
  """
  threads = max(os.cpu_count() or 1, 4 * _local_cpu_device_count())
  os.environ.setdefault("PJRT_NPROC", str(threads))


def initialize_distributed():
  """Joins the JAX processes of a multi-host run (no-op for one process)."""
  import jax  # pylint: disable=g-import-not-at-top
  if _COORDINATOR.value:
    if _NUM_PROCESSES.value is None or _PROCESS_ID.value is None:
      sys.exit("flag error: --coordinator_address needs --num_processes and "
               "--process_id")
    if jax.config.jax_platforms in ("cpu",) or os.environ.get(
        "JAX_PLATFORMS") == "cpu":
      # CPU processes exchange collectives over gloo.
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
      _reserve_cpu_threads()
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  elif _MULTIHOST.value:
    jax.distributed.initialize()
  if jax.process_count() > 1:
    logging.info("process %d of %d, %d local / %d global devices",
                 jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())


def run(config, workdir: str, mode: str, *, recompute: bool = False):
  """Runs one mode; the library entry point behind the command line.

  Every mode but `report` holds the workdir's lock while it runs (one run per
  workdir; the processes of one multi-host run share it through process 0).
  """
  config_pkg.validate(config, mode)
  wd = workdir_lib.as_workdir(workdir)
  config = _with_data_dir(config, wd)
  lock = workdir_lock.Lock(wd)
  if mode != "report" and jax_process_index() == 0:
    lock.acquire()
  try:
    return _run_mode(config, wd, mode, recompute)
  finally:
    lock.release()


def _with_data_dir(config, wd: workdir_lib.Workdir):
  """A `data.path` dataset is prepared in W/data unless data.data_dir is set."""
  if not config.data.path or config.data.data_dir:
    return config
  config = copy.deepcopy(config)
  with config.unlocked():
    config.data.data_dir = wd.sub("data")
  return config


def jax_process_index() -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index()


def _run_mode(config, wd: workdir_lib.Workdir, mode: str, recompute: bool):
  # pylint: disable=g-import-not-at-top
  if config.data.name == "synthetic_linear":
    from roar_jax.benchmark.roar import synthetic_linear
    out = synthetic_linear.run(config, wd)
    print(f"report: {wd.report()}")
    return out
  if mode == "sanity":
    from roar_jax.benchmark.sanity import checks as sanity
    return sanity.run(config, wd, recompute=recompute)
  from roar_jax.benchmark.roar import pipeline as roar
  if mode == "report":
    return roar.report(config, wd)
  if mode == "roar":
    out = roar.run(config, wd, recompute=recompute)
    if out["report"] is not None:  # Process 0 writes the report.
      print(f"report: {wd.report()}")
    return out
  if mode == "finetune_fidelity":  # The metrics stage, the fine-tune on.
    config, mode = roar.finetune_switched_on(config), "metrics"
  plan = roar.open_run(config, wd, mode=mode, recompute=recompute)
  if mode == "metrics":
    out = roar.run_metrics(config, plan)
    if jax_process_index() == 0:
      print(f"metrics: {wd.report('metrics.csv')}")
    return out
  if mode == "train":
    from roar_jax.data import sources
    result = roar.train_base(config, plan, sources.get_source(config.data))
    print(f"test accuracy: {result['test_accuracy']:.4f} "
          f"({result['num_test_examples']} images, {result['steps']} steps)")
    return result
  from roar_jax.benchmark.roar import explain
  out = explain.run(config, wd, plan=plan)
  print(f"gradient passes per image: {out['gradient_passes']:,} "
        f"({out['gradient_passes_alone']:,} if each estimator were computed "
        "alone)")
  return out


def last_override_wins(argv: list[str]) -> list[str]:
  """Keeps only the last of a `--config.<field>` override given twice.

  absl's convention for a repeated flag is that the last value wins;
  ml_collections instead joins repeated overrides of a tuple field, so
  `--config.roar.thresholds=0.1 --config.roar.thresholds=0.5` would run both
  thresholds, and a second thought would silently double the grid. Here
  every field follows absl; a tuple is given as one value,
  `--config.roar.thresholds=0.1,0.5` or
  `--config.explain.estimators="('gradient', 'random')"`. A dropped override
  is reported on stderr.

  Args:
    argv: the command line, program name first.

  Returns:
    argv without the overrides that a later one of the same field replaces.
  """
  groups, i = [], 0  # (field or None, tokens), in order.
  while i < len(argv):
    token, field = argv[i], None
    tokens = [token]
    if token.startswith("--config."):
      field = token[2:].split("=", 1)[0]
      if "=" not in token and i + 1 < len(argv) and not argv[
          i + 1].startswith("--"):
        tokens.append(argv[i + 1])  # `--config.field value`.
        i += 1
    groups.append((field, tokens))
    i += 1
  last = {field: n for n, (field, _) in enumerate(groups) if field}
  out = []
  for n, (field, tokens) in enumerate(groups):
    if field and last[field] != n:
      print(f"warning: --{field} is given more than once; the last value "
            f"wins ({' '.join(groups[last[field]][1])} replaces "
            f"{' '.join(tokens)})", file=sys.stderr)
      continue
    out.extend(tokens)
  return out


def resolve_config_name(argv: list[str]) -> list[str]:
  """argv with `--config=NAME` (`--config NAME`) made the path of its file.

  ml_collections loads `--config` as a path while absl parses the flags, so
  a bare name such as `toy` becomes the package's configs/toy.py here,
  before parsing (`defaults.config_path`; a ValueError, with the closest
  name, if configs/ lacks it). A path, with or without ml_collections'
  `:argument` suffix, is left as it is.
  """
  out = list(argv)
  for i, token in enumerate(out):
    if token.startswith("--config="):
      out[i] = "--config=" + _config_file(token[len("--config="):])
    elif token == "--config" and i + 1 < len(out):
      out[i + 1] = _config_file(out[i + 1])
  return out


def _config_file(value: str) -> str:
  name, colon, argument = value.partition(":")
  return config_defaults.config_path(name) + colon + argument


def _mode_hint(error: flags.Error) -> str:
  """The line for a misspelled --mode, with the closest mode ('')."""
  match = re.match(r"flag --mode=(.*?): value should be one of", str(error))
  if not match:
    return ""
  given = match.group(1)
  hint = hints.did_you_mean(given, MODES, show=lambda m: f"--mode={m}")
  return (f"--mode={given} is not a mode{hint} (modes: "
          f"{', '.join(MODES)})")


def _parse_flags(argv):
  """Parses flags; a bad --config.<field> override exits with one line."""
  try:
    return flags.FLAGS(last_override_wins(resolve_config_name(argv)))
  except flags.Error as e:
    sys.exit(f"flag error: {_mode_hint(e) or e}")
  except (AttributeError, KeyError) as e:
    # ml_collections reports an unknown field from deep inside ConfigDict,
    # quoted and escaped; name the field and the override instead.
    text = str(e.args[0] if e.args else e)
    text = text.replace("\\'", "'").replace("\\n", " ").replace("\n", " ")
    match = re.search(r"'(\w+)'", text)
    field = match.group(1) if match else text
    hint = (text[text.index("Did you mean"):].rstrip("'\\\"")
            if "Did you mean" in text else "")
    bad = [a for a in argv[1:] if a.startswith("--config.") and field in a]
    sys.exit(f"config error: {' '.join(bad) or field}: the config has no "
             f"field {field!r}. {hint}".rstrip())
  except (TypeError, ValueError) as e:
    sys.exit(f"config error: {e}")
  except SyntaxError as e:
    sys.exit(f"config error: {e.filename}, line {e.lineno}: {e.msg}")
  except Exception as e:  # pylint: disable=broad-except
    # The config file's own code failed (a NameError in get_config, ...).
    sys.exit(f"config error: the config file failed to load: "
             f"{type(e).__name__}: {e}")


def _config_value():
  """The loaded config; a config file that cannot be read is one line."""
  try:
    config = _CONFIG.value
    # A file that failed to load gives a stand-in that raises when used.
    config.keys()
    return config
  except Exception as e:  # pylint: disable=broad-except
    text = " ".join(str(e).split())
    match = re.search(r"\[Errno \d+\] (.*)$", text)
    raise config_pkg.ConfigError(
        f"cannot load the config file: {match.group(1) if match else text}"
    ) from e


def _quiet_libraries(record) -> bool:
  """Keeps INFO lines of the project; libraries (orbax logs every checkpoint
  step in detail) speak only at WARNING and above. TFDS's notice that our
  offline builders use a builder config is not news to anyone."""
  if "roar_jax" in record.pathname:
    return True
  return (record.levelno >= pylogging.WARNING
          and not str(record.msg).startswith("Using custom data configuration"))


class _BarSafeStream:
  """Log records written between progress bars: `tqdm.write` clears the
  bars, prints the record on its own line and redraws them, so a bar and a
  log record never share a line."""

  def __init__(self, stream):
    self.stream = stream

  def write(self, text: str):
    import tqdm  # pylint: disable=g-import-not-at-top
    if text.strip():
      tqdm.tqdm.write(text.rstrip("\n"), file=self.stream)

  def flush(self):
    self.stream.flush()

  def close(self):
    """The terminal stays open: absl closes its stream at exit."""

  def __getattr__(self, name):
    return getattr(self.stream, name)


def _setup_logging():
  """Project INFO lines, library warnings; records never share a line with
  a progress bar; TFDS shows no bars of its own."""
  if flags.FLAGS.verbosity < logging.INFO:
    logging.set_verbosity(logging.INFO)
  for handler in (*pylogging.getLogger().handlers,
                  logging.get_absl_handler().python_handler):
    handler.addFilter(_quiet_libraries)
  python_handler = logging.get_absl_handler().python_handler
  python_handler.stream = _BarSafeStream(python_handler.stream)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()


def _user_errors() -> tuple[type[BaseException], ...]:
  """A user's errors (config, file, second run): one line naming it."""
  from roar_jax.data import errors as data_errors  # pylint: disable=g-import-not-at-top
  return (config_pkg.ConfigError, workdir_lib.WorkdirError,
          data_errors.DataError)


def _fail(prefix: str, error: BaseException):
  """Exits with one line; `--verbosity=1` also prints the traceback."""
  if flags.FLAGS.verbosity >= 1:
    traceback.print_exception(error)
  text = " ".join(str(error).split())
  sys.exit(f"{prefix}: {text}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _setup_logging()
  initialize_distributed()
  try:
    run(_config_value(), _WORKDIR.value, _MODE.value,
        recompute=_RECOMPUTE.value)
  except config_pkg.ConfigError as e:
    _fail("config error", e)
  except _user_errors() as e:
    _fail("error", e)
  except OSError as e:
    where = e.filename or "a file"
    _fail("error", OSError(f"cannot use {where}: "
                           f"{workdir_lib.os_reason(e)}"))
  except KeyboardInterrupt:
    sys.exit("interrupted: rerun the same command to resume")


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
