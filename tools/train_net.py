#!/usr/bin/env python
"""Train and evaluate ALBEF on any task (pretraining, retrieval, SNLI-VE, NLVR2) from a config.

    python tools/train_net.py --config-file configs/pretrain/synthetic.yaml [--resume] [--eval-only] [--num-gpus N] [KEY=VALUE ...]
    python tools/train_net.py --list-components     # registered components and their plugins
"""
from __future__ import annotations

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout without installing

from torch.multiprocessing import ProcessExitedException  # noqa: E402

from albef.engine import default_argument_parser, launch, setup, trainer_class  # noqa: E402
from albef.utils import comm  # noqa: E402
from albef.utils.errors import USER_ERRORS, report_user_error  # noqa: E402

logger = logging.getLogger("albef")


def main(args) -> None:
    try:
        cfg = setup(args)
        trainer = trainer_class(cfg)(cfg, eval_only=args.eval_only)
        if args.eval_only:
            found = trainer.checkpointer.load_newest_complete(checkpointables=[]) if args.resume else None
            if found is not None:
                logger.info("--eval-only --resume: evaluating %s", found[0])
            elif cfg.model.weights:
                trainer.resume_or_load(resume=False)
            else:
                logger.warning("--eval-only without --resume or model.weights: evaluating randomly initialised weights")
            results = trainer.evaluate()
            if comm.is_main_process() and results:
                from albef.utils.events import append_metrics

                append_metrics(os.path.join(cfg.output_dir, "metrics.json"), results)
            return
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
    except USER_ERRORS as e:
        report_user_error(e)
        sys.exit(2)


if __name__ == "__main__":
    parser = default_argument_parser()
    args = parser.parse_args()
    if args.list_components:
        try:
            from albef.plugins import format_components

            print(format_components())
        except USER_ERRORS as e:
            report_user_error(e)
            sys.exit(2)
        sys.exit(0)
    if not args.config_file:
        parser.error("the following arguments are required: --config-file (or use --list-components)")
    try:
        launch(main, args.num_gpus, args=(args,))
    except USER_ERRORS as e:
        report_user_error(e)
        sys.exit(2)
    except ProcessExitedException as e:  # a spawned rank exited non-zero; it reported why
        sys.exit(e.exit_code or 1)
