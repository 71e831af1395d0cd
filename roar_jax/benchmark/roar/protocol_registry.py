"""The protocol registry: stage-level work beside the no-retrain metrics.

A metric scores images one batch at a time (`metric_registry.py`); a
protocol is work over the whole grid that trains or compares: the leakage
probe trains classifiers on the removal masks, the agreement table ranks
the estimators by every score. Each is one module that registers itself,
declaring what it needs and what it writes; the metrics stage runs the
enabled ones after metrics.csv is written (`enabled` gives the order), the
pipeline settles their planned artifacts with the plan's, and `--mode=report`
reads their stored rows:

    @protocol_registry.register("my_protocol", needs=("base", "ranks"),
                                writes=("my_protocol.csv",))
    def my_protocol(context):
      ...  # compute what is missing, write W/report/my_protocol.csv
      return rows

What a protocol may need (`NEEDS`):
- 'base': the trained base model (`context.plan.base`);
- 'ranks': the rank stores;
- 'retrains': the ROAR/KAR results (`context.results_rows`, may be None);
- 'metric_rows': metrics.csv's rows (`context.metric_rows`, process 0).
"""

import dataclasses
from typing import Any, Callable, Optional, Sequence

from roar_jax import hints
from roar_jax.benchmark.roar import metric_registry

NEEDS = ("base", "ranks", "retrains", "metric_rows")


@dataclasses.dataclass
class Context:
  """What a protocol's run gets.

  Attributes:
    config: the experiment config.
    plan: the grid's artifacts (`grid.plan_of`), its workdir included.
    source: the undegraded dataset.
    channel_mean: the grid's fill (`grid.channel_mean`), or None.
    metric_rows: metrics.csv's rows (process 0; None elsewhere).
    results_rows: results.csv's ROAR/KAR rows, if any.
  """
  config: Any
  plan: Any
  source: Any
  channel_mean: Any = None
  metric_rows: Optional[Sequence[dict]] = None
  results_rows: Optional[Sequence[dict]] = None


@dataclasses.dataclass(frozen=True)
class Protocol:
  """A registered protocol.

  Attributes:
    name: its name: the key of its rows in `metrics.run`'s result.
    run: Context -> rows: computes what has no matching record, writes its
      report files (process 0) and returns its rows. Called on every
      process (training is collective).
    needs: what it reads (`NEEDS`).
    writes: the report files it writes (under W/report/).
    enabled: config -> whether this run computes it.
    artifacts: (config, plan) -> the provenance artifacts it plans, settled
      with the plan's (a stale record is noticed before anything runs).
    stored: (config, plan) -> its rows from the records that match the
      config (for `--mode=report`), or None when it keeps no records.
    metric_rows: its rows are metrics.csv rows (the scores of another model
      under the registered metrics, in columns of their own): the stage
      appends them to `context.metric_rows` and to metrics.csv, so the
      protocols after it (the agreement table) see them, and `--mode=report`
      appends its stored rows alike.
  """
  name: str
  run: Callable[[Context], list]
  needs: tuple[str, ...]
  writes: tuple[str, ...]
  enabled: Callable[[Any], bool]
  artifacts: Callable[[Any, Any], list]
  stored: Optional[Callable[[Any, Any], list]] = None
  metric_rows: bool = False


_REGISTRY: dict[str, Protocol] = {}


def register(name: str, *, needs: Sequence[str], writes: Sequence[str],
             enabled: Callable[[Any], bool] = lambda config: True,
             artifacts: Callable[[Any, Any], list] = lambda config, plan: [],
             stored: Optional[Callable[[Any, Any], list]] = None,
             metric_rows: bool = False, replace: bool = False):
  """Decorator: registers `run(context) -> rows` as the protocol `name`.

  Args:
    name: letters, digits and underscores.
    needs: see `NEEDS`.
    writes: the report files it writes.
    enabled: whether a config runs it (default: always).
    artifacts: the artifacts it plans (default: none).
    stored: its rows from matching records (report mode), or None.
    metric_rows: its rows are metrics.csv rows (see `Protocol`).
    replace: allow replacing a registered protocol (tests).

  Returns:
    The decorator; it returns `run` unchanged.
  """
  metric_registry.check_declaration("protocol", name, needs, NEEDS)

  def decorator(fn):
    metric_registry.check_free("protocol", name, _REGISTRY, replace)
    _REGISTRY[name] = Protocol(name, fn, tuple(needs), tuple(writes),
                               enabled, artifacts, stored, bool(metric_rows))
    return fn

  return decorator


def unregister(name: str) -> None:
  """Removes a registered protocol (for tests and interactive use)."""
  _REGISTRY.pop(name, None)


def get(name: str) -> Protocol:
  """The registered protocol `name` (ValueError with the closest name)."""
  protocol = _REGISTRY.get(name)
  if protocol is None:
    known = list(_REGISTRY)
    raise ValueError(f"unknown protocol {name!r}"
                     f"{hints.did_you_mean(name, known)} (known: {known})")
  return protocol


def names() -> tuple[str, ...]:
  """Every registered protocol's name, in registration order."""
  return tuple(_REGISTRY)


def enabled(config) -> list[Protocol]:
  """The protocols `config` runs, in the order they run: registration
  order, except that a protocol that reads metrics.csv's rows runs after
  every protocol that adds to them (so the agreement table sees the
  fine-tuned model's scores whatever the import order)."""
  protocols = [p for p in _REGISTRY.values() if p.enabled(config)]
  return sorted(protocols, key=lambda p: "metric_rows" in p.needs)
