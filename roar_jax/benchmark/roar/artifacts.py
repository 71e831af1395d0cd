"""What a ROAR/KAR run produces, and the fingerprint each artifact must carry.

`plan(config, workdir)` lists every artifact the config's grid uses, with its
provenance: the config fields that determine it and its inputs' fingerprints
(`workdir.provenance`). Inputs chain: a rank store depends on the base model
(the controls only on the data; maps computed elsewhere on the data and the
hash of their arrays, `external_maps.fingerprints`), a degraded dataset on
its rank store and the fill, a retrain unit and its result on the dataset,
the training fields and the unit's seed.

`check(plan)` compares the plan with what the workdir holds, before any work:
an artifact of the plan that exists under another fingerprint would mean
something else now, so the run stops, naming the changed fields and the
artifacts they affect, unless `--recompute` moves them aside. Artifacts that
the plan does not name (an estimator or threshold dropped from the grid) are
left alone and not reported.
"""

import dataclasses
from typing import Any, Iterable

from roar_jax import levels as levels_lib
from roar_jax import provenance as provenance_lib
from roar_jax import workdir as workdir_lib
from roar_jax.provenance import Artifact
from roar_jax.benchmark.roar import estimator_names
from roar_jax.benchmark.roar import external_maps
from roar_jax.benchmark.roar import metric_options
from roar_jax.data import offline_builder

# Fields that change where or how fast work runs, never what it computes.
_DATA_LOCATION = ("data_dir", "manual_dir", "cache", "path")
_TRAIN_LOGISTICS = ("log_every", "checkpoint_every", "eval_batch_size")
# `maps` is where external maps lie: their content is an input of the rank
# stores they make (`external_maps.fingerprints`), not the path.
_EXPLAIN_LOGISTICS = ("estimators", "batch_size", "chunk_size",
                      "num_visualize", "transform", "transforms", "maps",
                      "maps_replace")


def data_fields(data_config) -> dict[str, Any]:
  """The fields that say which images a dataset holds, and their content."""
  d = data_config.to_dict()
  fields = {f"data.{k}": v for k, v in provenance_lib.flatten(d).items()
            if k.split(".")[0] not in _DATA_LOCATION}
  for key in ("path", "manual_dir"):
    if d.get(key):
      # Content, not location: a folder that changed is another dataset.
      fields[f"data.{key}.content"] = offline_builder.content_fingerprint(
          d[key])
  return fields


def training_fields(config) -> dict[str, Any]:
  """The fields that determine a trained model, given its data."""
  out = {"seed": config.seed}
  out.update({f"model.{k}": v for k, v in
              provenance_lib.flatten(config.model.to_dict()).items()})
  out.update({f"train.{k}": v for k, v in
              provenance_lib.flatten(config.train.to_dict()).items()
              if k not in _TRAIN_LOGISTICS})
  return out


def explain_fields(config, estimator: str,
                   external: bool = False) -> dict[str, Any]:
  """The fields that determine one estimator's rank store: the explain
  options it reads (`estimator_names.options_read`: adding an estimator
  with options of its own leaves the others' stores valid), and its own
  ranking transform (not the other estimators'). Maps computed elsewhere
  (`external`) read no method option and no seed (their ranking draws
  nothing): only the ranking's fields and, for `blur.`, its sigma."""
  if external:
    blurred = estimator_names.parse(estimator).blurred
    read = frozenset({"smooth_sigma"} if blurred else ())
  else:
    read = estimator_names.options_read(estimator)
  out = {"estimator": estimator,
         "transform": estimator_names.transform_for(config.explain,
                                                    estimator)}
  if not external:
    out["seed"] = config.seed
  for k, v in provenance_lib.flatten(config.explain.to_dict()).items():
    if k.split(".")[0] in _EXPLAIN_LOGISTICS:
      continue
    if read is None or k not in estimator_names.METHOD_OPTIONS or k in read:
      out[f"explain.{k}"] = v
  return out


def _artifact(kind, path, fields, inputs=None) -> Artifact:
  """An artifact determined by `fields` and `inputs`.

  Args:
    kind: what it is, for messages.
    path: its file or folder.
    fields: the config fields that determine it directly.
    inputs: {name: an upstream Artifact, or the fields of an input that is
      not an artifact of the workdir (the data)}.

  Returns:
    The Artifact. Its record's `lineage` holds the fields of the whole chain,
    so that a change upstream is named where it shows.
  """
  fingerprints, lineage = {}, {}
  for name, up in (inputs or {}).items():
    if isinstance(up, Artifact):
      fingerprints[name] = up.fingerprint
      lineage.update(up.record["lineage"])
    else:
      fingerprints[name] = provenance_lib.fingerprint(up)
      lineage.update(up)
  record = provenance_lib.provenance(fields, fingerprints)
  record["lineage"] = {**provenance_lib.as_json(lineage), **record["fields"]}
  return Artifact(kind, path, record)


@dataclasses.dataclass
class Plan:
  """Every artifact a run of the config uses, by role.

  Datasets and no-retrain scores are keyed by (estimator, mode, threshold,
  fill); units and results by `grid.Unit`.
  """
  workdir: workdir_lib.Workdir
  data: str  # The data's fingerprint (not an artifact of the workdir).
  base: Artifact
  channel_mean: Artifact | None
  ranks: dict[str, Artifact]
  datasets: dict[tuple[str, str, float, str], Artifact]
  no_retrain: dict[tuple[str, str, float, str], Artifact]
  units: dict[Any, Artifact]  # grid.Unit -> its retrain folder
  results: dict[Any, Artifact]  # grid.Unit -> its result record

  def all(self) -> Iterable[Artifact]:
    yield self.base
    if self.channel_mean is not None:
      yield self.channel_mean
    for group in (self.ranks, self.datasets, self.no_retrain, self.units,
                  self.results):
      yield from group.values()

  def removals(self) -> list[tuple[str, str, float]]:
    """The (estimator, mode, threshold) of the grid, whatever the fill."""
    return sorted({key[:3] for key in self.datasets})


def dataset_name(key: tuple[str, str, float, str]) -> str:
  """The file name of the degraded dataset (and no-retrain score) of key =
  (estimator, mode, threshold, fill)."""
  estimator, mode, threshold, fill = key
  return workdir_lib.unit_name(estimator, mode, threshold,
                               fill=levels_lib.fill_suffix(fill))


def _fill_artifacts(config, wd: workdir_lib.Workdir, data):
  """The channel mean's artifact (None when no fill uses a computed mean),
  and per fill the fields and inputs that determine a dataset's fill."""
  rc = config.roar
  fills = levels_lib.fills_of(rc.fill)
  mean = None
  # The no-retrain metrics' fill reads the mean too: planned for them, it
  # stays an input of their records when a grid drops the channel-mean fill
  # (narrowing the grid keeps them valid).
  metrics_fill = metric_options.Options.from_config(config).fill
  if "channel_mean" in (*fills, metrics_fill) and not rc.fill_value:
    mean = _artifact("channel mean", wd.channel_mean, data)
  out = {}
  for fill in fills:
    fields = {"roar.fill": fill, "roar.fill_value": list(rc.fill_value),
              "seed": config.seed}
    inputs = {"channel_mean": mean} if (
        fill == "channel_mean" and mean is not None) else {}
    out[fill] = (fields, inputs)
  return mean, out


def plan(config, wd: workdir_lib.Workdir, units) -> Plan:
  """The artifacts of a run of `config`'s grid.

  Args:
    config: the experiment config.
    wd: the workdir.
    units: the grid's units (`grid.all_units(config)`).

  Returns:
    The Plan.
  """
  data = data_fields(config.data)
  data_fp = provenance_lib.fingerprint(data)
  base = _artifact("base model", wd.base,
                   {**data, **training_fields(config)})
  mean, fill_of = _fill_artifacts(config, wd, data)
  ranks = {}
  # Maps computed elsewhere enter by their content (and the data's order).
  external = external_maps.fingerprints(config)
  # A matched control's sigma comes from its estimator's rank store: those
  # are planned first.
  for est in sorted(config.explain.estimators, key=lambda e: bool(
      estimator_names.parse(e).matched_to)):
    matched = estimator_names.parse(est).matched_to
    method = estimator_names.maps_method(est)
    if matched:
      source = {"ranks": ranks[matched]}
    elif method in external:
      source = {"data": data, "maps": external[method]}
    elif estimator_names.model_free(est):
      source = {"data": data}
    else:
      source = {"base": base}
    ranks[est] = _artifact("rank store", wd.ranks(est),
                           explain_fields(config, est, method in external),
                           source)
  datasets, no_retrain, unit_dirs, results = {}, {}, {}, {}
  train = training_fields(config)
  for unit in units:
    key = unit.key
    if key not in datasets:
      name = dataset_name(key)
      fill_fields, fill_inputs = fill_of[unit.fill]
      fields = {**fill_fields, "mode": unit.mode,
                "threshold_percent": levels_lib.threshold_level(unit.threshold)}
      datasets[key] = _artifact(
          "degraded dataset", wd.dataset(name), fields,
          {"ranks": ranks[unit.estimator], **fill_inputs})
      no_retrain[key] = _artifact(
          "no-retrain score", wd.no_retrain(name), {},
          {"base": base, "dataset": datasets[key]})
    fields = {**train, "unit_seed": unit.seed}
    inputs = {"dataset": datasets[key]}
    unit_dirs[unit] = _artifact("retrain", wd.retrain(unit.name), fields,
                                inputs)
    results[unit] = _artifact("result", wd.result(unit.name), fields, inputs)
  return Plan(wd, data_fp, base, mean, ranks, datasets, no_retrain,
              unit_dirs, results)
