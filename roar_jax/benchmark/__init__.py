"""The benchmarks: ROAR/KAR grid, explain stage, results and report, the
synthetic linear experiment, and the sanity checks."""

from roar_jax.benchmark import explain
from roar_jax.benchmark import grid
from roar_jax.benchmark import report
from roar_jax.benchmark import results
from roar_jax.benchmark import randomization
from roar_jax.benchmark import ray_executor
from roar_jax.benchmark import roar
from roar_jax.benchmark import sanity
from roar_jax.benchmark import sanity_report
from roar_jax.benchmark import similarity
from roar_jax.benchmark import synthetic_linear
