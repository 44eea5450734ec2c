from albef.engine.defaults import DefaultTrainer, Trainer, default_argument_parser, setup, trainer_class
from albef.engine.launch import launch
from albef.engine.nonfinite import NonFiniteError
from albef.engine.train_loop import AccumulatingTrainer, HookBase, SimpleTrainer, TrainerBase

__all__ = [
    "AccumulatingTrainer", "DefaultTrainer", "HookBase", "NonFiniteError", "SimpleTrainer", "Trainer", "TrainerBase", "default_argument_parser", "launch", "setup",
    "trainer_class",
]
