from albef.engine.defaults import Trainer, default_argument_parser, setup
from albef.engine.launch import launch
from albef.engine.train_loop import HookBase, SimpleTrainer, TrainerBase

__all__ = ["HookBase", "SimpleTrainer", "Trainer", "TrainerBase", "default_argument_parser", "launch", "setup"]
