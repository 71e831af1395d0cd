"""The built-in protocols, registered on import: the leakage probe,
fine-tune-once fidelity (its rows join metrics.csv) and the agreement table
(it reads metrics.csv's rows, so it runs after them: `protocol_registry.
enabled`).

A new protocol module is imported here (one line); `protocol_registry.py`
says how one is written.
"""

from roar_jax.benchmark.roar import protocol_registry
# Imported for their registrations.
from roar_jax.benchmark.roar import leakage  # pylint: disable=unused-import
from roar_jax.benchmark.roar import finetune_fidelity  # pylint: disable=unused-import
from roar_jax.benchmark.roar import agreement  # pylint: disable=unused-import

# The registry with every built-in protocol in it: what the stage and the
# pipeline read.
get = protocol_registry.get
names = protocol_registry.names
enabled = protocol_registry.enabled
