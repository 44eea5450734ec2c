"""Packaging for albef. ``pip install -e .[dev]`` installs the library plus test tools.

The configs of ``configs/`` ship inside the package as ``albef/model_zoo/configs`` (a
link made here at build time, as detectron2's model zoo), so an installed plugin's config
can ``_base_: albef://pretrain/synthetic.yaml``.
"""
import os

from setuptools import find_packages, setup

_HERE = os.path.dirname(os.path.abspath(__file__))
_ZOO = os.path.join(_HERE, "albef", "model_zoo", "configs")
if os.path.isdir(os.path.join(_HERE, "configs")) and not os.path.lexists(_ZOO):
    os.makedirs(os.path.dirname(_ZOO), exist_ok=True)
    os.symlink(os.path.join("..", "..", "configs"), _ZOO)

setup(
    name="albef",
    version="0.1.0",
    description="ALBEF (Align before Fuse) as a modular, config-driven vision-language framework",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["albef", "albef.*"]),
    package_data={"albef.model_zoo": ["configs/*.yaml", "configs/*/*.yaml"]},
    install_requires=[
        # The local wheel cache serves torch 2.14.1 / torchvision 0.29.1; keep ranges they satisfy.
        "torch>=2.4,<=2.14.1",
        "torchvision>=0.19,<=0.29.1",
        "timm>=1.0",
        "transformers>=4.45",
        "tokenizers>=0.19",
        "safetensors>=0.4",
        "fvcore>=0.1.5",
        "iopath>=0.1.9",
        "omegaconf>=2.3",
        "tensorboard>=2.14",
        "pluggy>=1.3",
        "pillow>=9.0",
        "webdataset>=0.2.86",  # tar shards (WebDatasetPretrain, tools/make_shards.py)
        "braceexpand>=0.1.7",  # shard patterns like shard-{000000..000999}.tar
        "tqdm>=4.60",
        "numpy>=1.24",
    ],
    extras_require={
        # charts and Grad-CAM figures (tools/visualize_gradcam.py)
        "report": ["matplotlib>=3.7"],
        # faiss backends of image search (tools/search.py --backend faiss-flat|faiss-ivf)
        "search": ["faiss-cpu>=1.7.4"],
        # ONNX export and its check against eager PyTorch (tools/export.py)
        "export": ["onnx>=1.15", "onnxruntime>=1.17", "onnxscript>=0.1"],
        # albef.load("hf-hub:org/repo")
        "hub": ["huggingface_hub>=0.20"],
        # the browser demo (tools/demo.py)
        "demo": ["gradio>=6.0,<7", "gradio_client>=2.0"],
        # the tests: every optional feature is exercised, the demo in a real browser (selenium
        # drives the system's chromium; .ci/run installs it with apt)
        "dev": ["pytest>=7.0", "pytest-timeout>=2.1", "pytest-xdist>=3.5", "filelock>=3.12", "matplotlib>=3.7",
                "faiss-cpu>=1.7.4", "onnx>=1.15", "onnxruntime>=1.17", "onnxscript>=0.1", "huggingface_hub>=0.20",
                "gradio>=6.0,<7", "gradio_client>=2.0", "selenium>=4.10"],
    },
)
