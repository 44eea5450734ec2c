"""``tools/demo.py``'s work: load the model, its examples and an index, build the page, serve it.

Everything that can go wrong before the page is up (a checkpoint that does not load, a moved
vocabulary, an examples folder that is not there, gradio missing, a busy port) is a
:class:`DemoSetupError` with one sentence naming the file or value, which the CLI prints as
``error: ...``.
"""
from __future__ import annotations

import os
from typing import Any

from albef.checkpoint.checkpointer import CheckpointMismatchError
from albef.demo.examples import config_examples, example_colours, folder_examples
from albef.demo.predictor import DemoInputError, DemoPredictor


class DemoSetupError(RuntimeError):
    """The demo cannot start; the message says why."""


def load_index(path: str) -> Any:
    """The image index of ``tools/index_images.py`` at ``path`` (for the Search tab)."""
    if not os.path.isdir(path):
        raise DemoSetupError(f"--index {path}: not a folder (make one with python tools/index_images.py)")
    try:
        from albef.inference.index import ImageIndex
    except ImportError as e:
        raise DemoSetupError(f"--index needs albef.inference.index ({e})") from e
    try:
        return ImageIndex.load(path)
    except (OSError, ValueError, KeyError) as e:
        raise DemoSetupError(f"--index {path}: {e}") from e


def build(model: str, index: str | None = None, examples: str | None = None, device: str | None = None,
          tokenizer: str | None = None, gradcam_layer: int = 0):
    """(Gradio app, folders the page may serve files from) of a model name or path."""
    import albef
    from albef.config.errors import ConfigError
    from albef.model_zoo.zoo import ModelZooError

    try:
        from albef.demo.app import build_app
    except ImportError as e:
        raise DemoSetupError(str(e)) from e
    try:
        m, pre = albef.load(model, device=device, tokenizer=tokenizer)
    except (ModelZooError, ConfigError, CheckpointMismatchError, OSError, ValueError) as e:
        raise DemoSetupError(f"--model {model}: {e}".replace("\n", " ")) from e
    try:
        predictor = DemoPredictor(m, pre, gradcam_layer=gradcam_layer, index=load_index(index) if index else None)
    except DemoInputError as e:
        raise DemoSetupError(f"--gradcam-layer: {e}") from e
    try:
        found = folder_examples(examples) if examples else config_examples(m.config)
    except (OSError, ValueError) as e:
        raise DemoSetupError(str(e)) from e
    colours = example_colours(m.config, examples)
    roots = {os.path.dirname(os.path.abspath(e.image)) for e in found}
    if predictor.index is not None:  # the search tab shows the indexed files
        roots.add(os.path.abspath(str(predictor.index.image_root)))
    roots = sorted(roots)
    return build_app(predictor, found, colours), roots


def serve(model: str, index: str | None = None, examples: str | None = None, host: str = "127.0.0.1", port: int = 7860,
          device: str | None = None, tokenizer: str | None = None, gradcam_layer: int = 0) -> None:
    """Build the demo and serve it on ``host:port`` until interrupted."""
    from albef.demo.app import launch

    app, roots = build(model, index, examples, device, tokenizer, gradcam_layer)
    try:
        launch(app, host=host, port=port, allowed_paths=roots)
    except OSError as e:  # the port is taken, the address is not this machine's
        raise DemoSetupError(f"cannot serve on {host}:{port}: {e}") from e
