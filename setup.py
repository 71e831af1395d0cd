"""roar_jax: the ROAR/KAR benchmark, sanity checks and no-retrain metrics in JAX."""

import setuptools

setuptools.setup(
    name="roar_jax",
    version="0.2.0",
    description=(
        "Does a saliency method find the pixels the model needs? ROAR/KAR "
        "retraining, sanity checks and no-retrain metrics in JAX/Flax."
    ),
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["roar_jax", "roar_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.30",
        "flax>=0.8.5",
        "optax>=0.2.2",
        "orbax-checkpoint>=0.5.20",
        "ml-collections>=0.1.1",
        "absl-py>=2.1.0",
        "tensorflow-cpu>=2.16.1",
        "tensorflow-datasets>=4.9.6",
        # tensorflow-datasets imports it for its built-in builders without
        # declaring it.
        "importlib_resources>=6.0",
        "numpy>=1.26",
        "scipy>=1.11",
        # One BLAS thread around the banded Cholesky of ROAD's imputation
        # (data/host_fill.py): threads on its narrow band only wait.
        "threadpoolctl>=3.1",
        "pandas>=2.0",
        "matplotlib>=3.8",
        "scikit-image>=0.22",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "etils[epath]>=1.7",
    ],
    extras_require={
        # Ray: tests/test_ray_executor.py runs the grid on a local cluster.
        # gs:// workdirs are tested against a GCS emulator on 127.0.0.1.
        "test": ["pytest>=8.0", "pytest-xdist>=3.8", "ray[default]>=2.9",
                 "gcp-storage-emulator>=2024.8", "gcsfs>=2024.2",
                 "google-cloud-storage>=2.14"],
        # gs:// workdirs: TensorBoard event files (tensorboardX) need the
        # google-cloud-storage client; gcsfs serves etils.epath without TF.
        "gcs": ["google-cloud-storage>=2.14", "gcsfs>=2024.2"],
        # Peers the benches and reference-array scripts compare with: Captum, PAIR
        # saliency, Quantus, shap, Zennit.
        "bench": ["torch>=2.1", "captum>=0.7", "saliency>=0.2", "quantus>=0.5",
                  "zennit>=0.5",
                  "shap>=0.45"],
        "ray": ["ray[default]>=2.9"],
    },
)
