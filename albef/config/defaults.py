"""The complete config schema, with the paper's 4M pretraining recipe as values.

This is the one place where defaults live: ``configs/Base-ALBEF.yaml`` names this
recipe without repeating it, and task configs override only what their task changes.
Every config file is merged over this tree, so a key that is not here (outside the
open component nodes, see :mod:`albef.config.loader`) is a typo and is reported as one.
"""
from __future__ import annotations

import copy
from typing import Any

_DEFAULTS: dict[str, Any] = {
    "model": {
        "name": "ALBEF",
        # a checkpoint to start from (ours, .safetensors, or an official ALBEF file, converted on
        # the fly with its report logged); --resume takes precedence
        "weights": None,
        "weights_strict": True,  # false: load what matches and log the report (partial loads)
        "embed_dim": 256,  # ITC projection size; null: no projections or temperature (classifier tasks)
        "temp": 0.07,  # initial learnable temperature, clamped to [temp_min, temp_max]
        "temp_min": 0.001,
        "temp_max": 0.5,
        "vision_encoder": {
            "name": "TimmViT",
            "model_name": "vit_base_patch16_224",
            "img_size": 256,
        },
        "text_encoder": {
            "name": "BertTextEncoder",
            "num_layers": 6,  # BERT layers 0..5 encode text alone
            "config": {  # transformers.BertConfig fields; vocab_size null = from the tokenizer
                "vocab_size": None,
                "hidden_size": 768,
                "num_attention_heads": 12,
                "intermediate_size": 3072,
                "max_position_embeddings": 512,
                "hidden_dropout_prob": 0.1,
                "attention_probs_dropout_prob": 0.1,
                "layer_norm_eps": 1.0e-12,
            },
        },
        "fusion": {"name": "CrossAttentionFusion", "num_layers": 6},
        # task heads by key; a head is built only when an objective uses it (model.heads.<key>)
        "heads": {
            "itm": {"name": "ITMHead"},
            "mlm": {"name": "MLMHead"},
        },
        "teacher": {
            "name": "MomentumTeacher",
            "momentum": 0.995,
            "queue_size": 65536,
            "alpha": 0.4,
        },
        "objectives": {
            "itc": {"name": "ITCLoss", "weight": 1.0},
            "itm": {"name": "ITMLoss", "weight": 1.0, "miner": {"name": "ContrastiveHardNegativeMiner"}},
            "mlm": {"name": "MLMLoss", "weight": 1.0, "mask_prob": 0.15},
        },
    },
    "data": {
        # Built-in synthetic shapes world: null, or {root, seed, ...} (see albef.data.synthetic).
        # When set, the data is generated there on first use.
        "synthetic": None,
        # a downstream task's synthetic data, made from the same world and vocabulary:
        # null, or {task: retrieval|ve|nlvr, seed, num_train, num_val, num_test}
        "synthetic_task": None,
        "tokenizer": "bert-base-uncased",  # transformers name, local directory or a vocab.txt file
        "max_words": 30,  # official pre_caption word limit
        "max_tokens": 25,  # tokenizer max_length, [CLS] included (official pretraining)
        # ours: the tokenizer's [CLS] words [SEP]; official: ALBEF's [CLS] words (no [SEP]),
        # needed to reproduce official checkpoints (training and retrieval evaluation)
        "tokenization": "ours",
        "num_workers": 4,
        # text padding of training batches: longest (per batch: least work), max_length (every
        # batch data.max_tokens long: one shape, what train.compile needs), or auto (max_length
        # when the step is compiled, else longest)
        "padding": "auto",
        # training DataLoader settings (workers: data.num_workers); pin_memory auto = on CUDA
        # name: the loader builder (LOADER_REGISTRY): auto = the dataset's own (MapStyleLoader for
        # map-style datasets such as PretrainJSON, StreamingLoader for WebDatasetPretrain)
        "loader": {"name": "auto", "prefetch_factor": 4, "pin_memory": None, "persistent_workers": True},  # pin_memory null: auto
        "strict": False,  # true: a bad image or caption stops the run; false: skipped, counted, logged
        "image_ids": True,  # give same-image captions the same id (ITC positives, ITM exclusions)
        # turns a list of samples into a batch, tokenising the dataset's text field
        "collator": {"name": "ImageTextCollator"},
        # extra false captions for the training batches (compositional hard negatives):
        # null, or {name: CompositionalNegatives, rules, kinds, rate} (albef.data.compositional_negatives)
        "text_negatives": None,
        "train": {"name": "PretrainJSON", "ann_files": [], "image_root": ""},
        "val": None,  # a validation split for the evaluators (eval.<key>.split: val)
        "test": None,  # e.g. {name: RetrievalEvalJSON, ann_file: ..., image_root: ...}
        "transforms": {
            "image_res": "${model.vision_encoder.img_size}",
            "crop_scale": [0.2, 1.0],  # RandomResizedCrop scale; null = plain resize
            "hflip_prob": 0.5,
            "hflip_swap_words": {},  # e.g. {left: right, right: left}: keep captions true under flips
            # null switches it off; ops from the official list (see albef.data.transforms.OFFICIAL_AUGS)
            "randaugment": {
                "num_ops": 2,
                "magnitude": 7,
                "ops": ["Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness",
                        "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"],
            },
            "mean": [0.48145466, 0.4578275, 0.40821073],
            "std": [0.26862954, 0.26130258, 0.27577711],
        },
    },
    "train": {
        "trainer": "DefaultTrainer",  # TRAINER_REGISTRY name: a task may override the trainer's build_* methods
        "seed": 42,
        "device": "auto",  # auto: cuda when available, else cpu
        "max_iter": 300000,  # ~30 epochs of the 4M set (5.1M pairs) at global batch 512
        "batch_size": 64,  # per process
        "lr": 1.0e-4,
        "min_lr": 1.0e-5,
        "warmup_lr": 1.0e-5,
        "warmup_iters": 2000,  # the official code warms up for 2000 iterations
        "weight_decay": 0.02,
        "betas": [0.9, 0.999],
        "eps": 1.0e-8,
        "clip_grad": None,  # max grad norm; null = no clipping (official)
        "alpha_warmup_iters": None,  # alpha ramps 0 -> alpha over this many iterations; null = one epoch
        "amp": "auto",  # auto: bf16 autocast on CUDA, off on CPU; or bf16 / off
        # torch.compile the whole training forward + backward (one region; the EMA, queue and
        # clamps stay outside, in model.after_step): null (auto) = on for single-process CUDA
        # runs, off on the CPU (measured: no gain there) and under DDP (untested); true / false
        "compile": None,
        "compile_mode": None,  # torch.compile mode: null (default), reduce-overhead (CUDA graphs), max-autotune
        "compile_backend": "inductor",
        # optimizer steps are iterations; each is grad_accum_steps micro-batches of batch_size
        # per process (effective batch = batch_size x grad_accum_steps x processes), with one
        # optimizer step, one teacher EMA update and the enqueue of every micro-batch's momentum
        # features after it; ITC/ITM negatives come from the micro-batch (see the README)
        "grad_accum_steps": 1,
        # parameters kept fixed: names starting with any of these prefixes (e.g.
        # [vision_encoder, text_encoder] to train only the fusion encoder and heads) get no
        # gradient and no optimizer state; the teacher's EMA copies of them stay equal
        "frozen": [],
        # a non-finite loss or gradient norm: stop (raise, naming the iteration, the loss terms
        # and the batch's samples) or skip (no optimizer step, no EMA/queue update; counted as
        # skipped_steps in metrics.json). skip reads the flag every step (one host sync).
        "nonfinite": "stop",
        "checkpoint_period": 5000,
        "checkpoint_minutes": None,  # also checkpoint every this many minutes of training (null: off)
        # these signals finish the step, write a checkpoint and exit 0 (preemptible clusters)
        "preemption_signals": ["SIGTERM", "SIGUSR1"],
        # none, or zero: torch.distributed.optim.ZeroRedundancyOptimizer (optimizer state sharded
        # across processes; a no-op on one process)
        "optimizer_sharding": "none",
        "max_to_keep": 3,
        "eval_period": 0,  # 0: evaluate only at the end
        # keep model_best.pth by this metric of the evaluators (e.g. retrieval_val/r_mean); null: none
        "best_metric": None,
        "best_metric_mode": "max",  # max or min
        "log_period": 20,
        "find_unused_parameters": "auto",  # DDP; auto: on when the objective set is not ITC+ITM+MLM
    },
    # evaluators by key (a map of EVALUATOR_REGISTRY components); metrics land in
    # metrics.json as <key>/<metric>; an evaluator whose split (data.<split>) is null is skipped
    "eval": {
        "retrieval": {
            "name": "RetrievalEvaluator",
            "split": "test",
            "batch_size": 64,
            "k_test": 256,  # ITM re-ranks the top-k of the ITC similarities
            "itm_batch_size": 256,  # pairs per fusion forward when re-ranking
            "max_tokens": 30,  # official retrieval evaluation pads/truncates captions to 30 tokens
            "rerank": True,  # false: ITC ranking only (a model without an ITM head)
            "rerank_score": "itm",  # itm: the ITM match logit (official); itm+itc: plus the ITC cosine (LAVIS)
        },
    },
    "output_dir": "output/albef",
}


def get_default_config_dict() -> dict[str, Any]:
    return copy.deepcopy(_DEFAULTS)
