"""The device mesh, shardings, and global batches for data parallelism.

Data parallelism is `jax.jit` over a one-axis Mesh named 'data': batches are
sharded along their leading axis, parameters and optimizer state replicated.
With several processes, each process holds its own rows of the global batch and
`jax.make_array_from_process_local_data` assembles the global array.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def create_mesh() -> Mesh:
  """A 1-D mesh over every device of every process.

  The axis is 'Auto' (shardings propagate through jit as in the pjit style),
  not 'Explicit': with explicit axes every reshape of a sharded array must
  name its output sharding, which model and saliency code need not know.
  """
  return jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'."""
  return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def local_batch_size(global_batch_size: int, mesh: Mesh,
                     field: str = "batch_size") -> int:
  """This process's share of a global batch, validated.

  Args:
    global_batch_size: the batch size of one step over all processes.
    mesh: the mesh the batch is sharded over.
    field: config field name, for the error message.

  Returns:
    global_batch_size // jax.process_count().
  """
  if global_batch_size % mesh.size:
    raise ValueError(
        f"config.train.{field}={global_batch_size} is not divisible by the "
        f"number of devices ({mesh.size})")
  return global_batch_size // jax.process_count()


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Turns this process's rows of a batch into global sharded arrays."""
  sharding = data_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}
