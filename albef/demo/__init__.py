"""The browser demo (``tools/demo.py``): :class:`~albef.demo.predictor.DemoPredictor` computes,
:func:`~albef.demo.app.build_app` lays out the Gradio page (the ``demo`` extra)."""
from albef.demo.examples import Example, config_examples, folder_examples, probe_texts
from albef.demo.predictor import DemoInputError, DemoPredictor

__all__ = ["DemoInputError", "DemoPredictor", "Example", "config_examples", "folder_examples", "probe_texts"]
