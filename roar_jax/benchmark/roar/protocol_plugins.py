"""The built-in protocols, registered on import, in the order the metrics
stage runs them: the leakage probe, then the agreement table (it reads the
others' rows).

A new protocol module is imported here (one line); `protocol_registry.py`
says how one is written.
"""

from roar_jax.benchmark.roar import protocol_registry
# Imported for their registrations.
from roar_jax.benchmark.roar import leakage  # pylint: disable=unused-import
from roar_jax.benchmark.roar import agreement  # pylint: disable=unused-import

# The registry with every built-in protocol in it: what the stage and the
# pipeline read.
get = protocol_registry.get
names = protocol_registry.names
enabled = protocol_registry.enabled
