from albef.engine.defaults import DefaultTrainer, Trainer, default_argument_parser, setup, trainer_class
from albef.engine.launch import launch
from albef.engine.train_loop import HookBase, SimpleTrainer, TrainerBase

__all__ = [
    "DefaultTrainer", "HookBase", "SimpleTrainer", "Trainer", "TrainerBase", "default_argument_parser", "launch", "setup",
    "trainer_class",
]
