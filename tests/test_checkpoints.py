"""Checkpoints restore bit for bit onto the mesh, however they were saved.

A replicated state is saved from a host copy (`checkpoints.save`); a sharded
one goes to orbax as it is. Both must come back with the target's values,
dtypes and shardings.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from roar_jax.training import checkpoints
from roar_jax.training import mesh as mesh_lib


def _state(mesh, sharded: bool):
  """A pytree like a train state: float and int leaves on the mesh."""
  repl = mesh_lib.replicated(mesh)
  rows = mesh_lib.data_sharding(mesh) if sharded else repl
  key = jax.random.key(0)
  return {
      "params": {"w": jax.device_put(jax.random.normal(key, (8, 3)), rows),
                 "b": jax.device_put(jnp.arange(3, dtype=jnp.float32), repl)},
      "step": jax.device_put(jnp.asarray(7, jnp.int32), repl),
  }


@pytest.mark.parametrize("sharded", [False, True])
def test_saved_state_restores_onto_the_mesh(tmp_path, sharded):
  mesh = mesh_lib.create_mesh()
  assert mesh.size == 8  # conftest's simulated devices.
  state = _state(mesh, sharded)
  mngr = checkpoints.manager(str(tmp_path))
  checkpoints.save(mngr, 3, state, wait=True)
  mngr.close()
  target = jax.tree.map(jnp.zeros_like, state)
  restored = checkpoints.restore_step(checkpoints.manager(str(tmp_path)),
                                      target, 3, str(tmp_path))
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    assert isinstance(got, jax.Array)
    assert got.dtype == want.dtype and got.sharding == want.sharding
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
