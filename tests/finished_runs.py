"""A workdir as a finished grid leaves it, for tests of what reads one."""

from conftest import load_config
from roar_jax.benchmark.roar import grid


def toy_grid(**roar):
  """The toy config at one threshold, one seed, ROAR only; `roar` sets more
  `config.roar` fields."""
  config = load_config("toy")
  with config.unlocked():
    config.roar.thresholds = (0.5,)
    config.roar.num_seeds = 1
    config.roar.modes = ("roar",)
    for k, v in roar.items():
      config.roar[k] = v
  return config


def lay_down(config, workdir, accuracy=0.5):
  """Writes every artifact of the config's plan, with every result at
  `accuracy`; returns the plan."""
  plan = grid.plan_of(config, workdir)
  for artifact in (plan.base, *plan.ranks.values()):
    artifact.write()
  for unit, artifact in plan.results.items():
    plan.units[unit].write()
    grid.write_result(plan, unit, {
        "estimator": unit.estimator, "mode": unit.mode,
        "threshold": unit.threshold, "seed": unit.seed,
        "test_accuracy": accuracy, "steps": 1, "wall_time_s": 0.0,
        "config_hash": "x", "fingerprint": artifact.fingerprint,
        "provenance": dict(artifact.record)})
  return plan
