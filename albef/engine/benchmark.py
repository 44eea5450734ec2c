"""Measurements of a config's training step, retrieval evaluation and data pipeline (``tools/benchmark.py``).

:func:`run_benchmark` runs one :class:`BenchmarkSpec` and returns the JSON-ready result;
:func:`format_summary` is its printed summary. The modes:

``train``: the run is assembled by a :class:`DefaultTrainer` subclass whose data builders are
replaced (:func:`bench_trainer`: no data set, files or downloads; no evaluators; no
public-weight init), and the step runner comes from ``DefaultTrainer.build_trainer(loader)``:
the same step and hooks as ``tools/train_net.py`` (writers go to a temporary directory).
``loader`` (:func:`train_batches`) yields host batches of the config's shapes. Warm-up steps,
timed steps, ``profile_steps`` under torch.profiler (aten ops, kernel launches, top ops) and
one step under FlopCounterMode follow each other in one EventStorage, as
``TrainerBase.train`` runs them. ``compare``: the step of several config variants,
interleaved in one process. ``eval``: the retrieval evaluator on
:class:`SyntheticRetrievalSet`. ``data``: :class:`albef.data.benchmark.DataLoaderBenchmark`.

The tokenizer (:func:`resolve_config`): the config's when it is a local file or directory;
when the config generates the synthetic data set, that data set is generated into a
temporary directory (its vocabulary sizes the model); otherwise (e.g. ``bert-base-uncased``,
never downloaded here) a stand-in WordPiece vocabulary of BERT's 30,522 ids with [PAD]=0,
[UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103 (:func:`standin_vocab`).
"""
from __future__ import annotations

import datetime
import math
import os
import random
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass, field

import torch

from albef.data.benchmark import WORDS, caption, per_sample_costs, stats, write_jpegs

BASE_RECIPE_FLOP_PER_PAIR = 2.886e11  # official ALBEF count for ViT-B/16 at 256 px + BERT-base 6+6, fwd+bwd
PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0)]  # bf16 dense; first match wins


@dataclass
class BenchmarkSpec:
    """What to measure (the flags of ``tools/benchmark.py``): ``what`` in train / eval / data /
    compare, on ``config_file`` + ``opts`` (KEY=VALUE), on ``device``; ``batch`` overrides
    ``train.batch_size``; the rest as the tool's ``--help`` says."""

    config_file: str
    what: str = "train"
    opts: list[str] = field(default_factory=list)
    device: str = "cpu"
    batch: int | None = None
    steps: int = 20
    warmup: int = 5
    profile_steps: int = 3
    flops_per_pair: float | None = None
    peak_tflops: float | None = None
    num_images: int | None = None
    num_texts: int | None = None
    repeats: int = 1
    workers: list[int] = field(default_factory=lambda: [0])
    target_pairs_per_s: float | None = None
    loaders: list[str] = field(default_factory=lambda: ["json"])
    variant: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- config and tokenizer
def standin_vocab(path: str) -> str:
    """A vocab.txt with BERT's ids for the special tokens and size; the caption words are real tokens."""
    toks = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS))
    toks += [f"tok{i}" for i in range(30522 - len(toks))]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(toks) + "\n")
    return path


def resolve_config(spec, tmp: str, extra: list[str], need_vocab: bool):
    """The config with the user's overrides, then ours; and a note on where the tokenizer came from."""
    from albef.config import load_config
    from albef.data import build as data_build

    user = list(spec.opts)
    cfg = load_config(spec.config_file, user)  # unknown keys etc. fail here, naming the key
    tok = cfg.data.tokenizer
    if os.path.exists(tok):
        src = f"config's ({tok})"
    elif cfg.data.synthetic is not None and need_vocab:
        # The vocabulary sizes the embeddings and the MLM head: generate the data set (not into the repo).
        root = os.path.join(tmp, "synthetic")
        user = user + [f"data.synthetic.root={root}"]
        t0 = time.perf_counter()
        data_build.prepare_synthetic(load_config(spec.config_file, user))
        tok = load_config(spec.config_file, user).data.tokenizer
        src = f"synthetic data set generated into a temporary directory in {time.perf_counter() - t0:.2f}s"
    else:
        tok = standin_vocab(os.path.join(tmp, "vocab.txt"))
        src = f"stand-in: BERT-sized WordPiece vocabulary (30522 ids) for {cfg.data.tokenizer!r}"
    ours = [f"data.tokenizer={tok}", f"output_dir={os.path.join(tmp, 'out')}", f"train.device={spec.device}"]
    if spec.batch:
        ours.append(f"train.batch_size={spec.batch}")
    cfg = load_config(spec.config_file, user + ours + extra)
    return cfg, src, ours + extra


def bench_trainer(eval_dataset=None):
    """A DefaultTrainer subclass without data: no generation, no training set, evaluation only on
    ``eval_dataset`` (None: no evaluators), weights left at their random init (timing only)."""
    from albef.engine.defaults import DefaultTrainer
    from albef.modeling import build_model

    class BenchTrainer(DefaultTrainer):
        @classmethod
        def prepare_data(cls, cfg):
            pass

        @classmethod
        def build_model(cls, cfg, tokenizer):
            return build_model(cfg, tokenizer, public_init=False)  # public weights would be a download

        @classmethod
        def build_train_dataset(cls, cfg):
            return None  # hence alpha_ramp_iters 0 unless set: full distillation, the steady state

        @classmethod
        def build_test_dataset(cls, cfg, split):
            return eval_dataset

    return BenchTrainer


# ---------------------------------------------------------------------------- synthetic inputs
def train_batches(cfg, tokenizer, batch: int, pool: int = 4, seed: int = 0):
    """Infinite host batches shaped as the collator makes them (``image``, ``input_ids``,
    ``attention_mask`` [B, data.max_tokens], distinct ``image_id``), cycling over ``pool`` draws."""
    g = torch.Generator().manual_seed(seed)
    res, length = int(cfg.model.vision_encoder.img_size), int(cfg.data.max_tokens)
    special = set(tokenizer.all_special_ids)
    words = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    drawn = []
    for _ in range(pool):
        ids = words[torch.randint(len(words), (batch, length), generator=g)]
        # Captions vary in length: most rows end early ([SEP] then padding); the longest fills the row.
        lengths = torch.randint(max(3, length // 2), length + 1, (batch,), generator=g)
        lengths[0] = length
        mask = (torch.arange(length) < lengths[:, None]).long()
        ids[:, 0] = tokenizer.cls_token_id
        if cfg.data.tokenization != "official":  # official ALBEF tokenization has no [SEP]
            ids[torch.arange(batch), lengths - 1] = tokenizer.sep_token_id
        ids = ids.masked_fill(mask == 0, tokenizer.pad_token_id)
        drawn.append((torch.randn(batch, 3, res, res, generator=g), ids, mask))
    n = 0
    while True:
        image, ids, mask = drawn[n % pool]
        # Fresh small tensors: on CPU .to(device) is a no-op and the model may write into them.
        yield {"image": image, "input_ids": ids.clone(), "attention_mask": mask.clone(),
               "image_id": torch.arange(n * batch, (n + 1) * batch)}
        n += 1


class SyntheticRetrievalSet(torch.utils.data.Dataset):
    """In memory, what RetrievalEvaluator reads of a RetrievalEvalJSON: ``text``, ``txt2img``,
    ``img2txt`` and ``[i] -> {image, index}`` (random pixels: no JPEG decoding)."""

    def __init__(self, num_images: int, num_texts: int, res: int, seed: int = 0):
        rng = random.Random(seed)
        self.text = [caption(rng) for _ in range(num_texts)]
        self.txt2img = [t % num_images for t in range(num_texts)]
        self.img2txt = [list(range(i, num_texts, num_images)) for i in range(num_images)]
        self.res, self.seed = res, seed

    def __len__(self) -> int:
        return len(self.img2txt)

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        return {"image": torch.randn(3, self.res, self.res, generator=g), "index": i}


# ---------------------------------------------------------------------------- measurements
# Every mode's JSON has these keys; null where the mode does not measure it.
COMMON_KEYS = ("batch", "steps", "warmup", "pairs_per_s", "step_time_s", "peak_memory_bytes", "peak_memory_kind", "amp",
               "aten_ops_per_step", "kernel_launches_per_step", "kernel_launches_definition", "measured_flop_per_pair",
               "flop_per_pair_used", "flop_per_pair_source", "peak_flops", "peak_flops_source", "mfu", "notes")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated (timed steps)"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS (ru_maxrss, whole process life)"


def profile_summary(prof, steps: int, cuda: bool) -> dict:
    """aten ops, kernel launches (or, on CPU, top-level aten ops: the host-overhead proxy) and top ops, per step."""
    from torch.autograd import DeviceType

    events = prof.events()
    aten = [e for e in events if e.name.startswith("aten::")]

    def top_level(e) -> bool:  # no aten:: op above it: what Python (or autograd) dispatched itself
        p = e.cpu_parent
        while p is not None:
            if p.name.startswith("aten::"):
                return False
            p = p.cpu_parent
        return True

    out = {"aten_ops_per_step": len(aten) / steps, "top_level_aten_ops_per_step": sum(map(top_level, aten)) / steps}
    if cuda:
        launches = [e for e in events if e.name in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")]
        if launches:
            out["kernel_launches_per_step"], out["kernel_launches_definition"] = len(launches) / steps, "cudaLaunchKernel/cuLaunchKernel runtime calls"
        else:
            kernels = [e for e in events if e.device_type == DeviceType.CUDA]
            out["kernel_launches_per_step"], out["kernel_launches_definition"] = len(kernels) / steps, "device kernel events"
    else:
        out["kernel_launches_per_step"] = out["top_level_aten_ops_per_step"]
        out["kernel_launches_definition"] = "CPU: top-level aten ops dispatched (no aten op above them), the host-overhead proxy"
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    avgs = sorted(prof.key_averages(), key=lambda a: getattr(a, key), reverse=True)[:10]
    out["top_ops_definition"] = f"profiler events (aten ops and record_function ranges) by {key}"
    out["top_ops_by_self_time"] = [
        {"name": a.key, "calls_per_step": a.count / steps, f"{key.replace('_total', '')}_ms_per_step": getattr(a, key) / 1e3 / steps}
        for a in avgs
    ]
    return out


def is_base_recipe(cfg) -> bool:
    """ViT-B/16 at 256 px with BERT-base split 6 text + 6 fusion layers (the official FLOP count applies)."""
    v, t = cfg.model.vision_encoder, cfg.model.text_encoder
    return (v.model_name in ("vit_base_patch16_224", "deit_base_patch16_224") and int(v.img_size) == 256
            and not v.get("model_kwargs") and t.config.hidden_size == 768 and t.config.intermediate_size == 3072
            and t.num_layers == 6 and cfg.model.fusion.num_layers == 6)


# ---------------------------------------------------------------------------- modes
def bench_train(spec, tmp: str) -> dict:
    total = spec.warmup + spec.steps + spec.profile_steps + 1  # +1: the FlopCounterMode step
    cfg, tok_src, ours = resolve_config(spec, tmp, [], need_vocab=True)
    if cfg.train.max_iter <= total:  # the LR schedule needs iter < max_iter; never reach the final checkpoint
        cfg, tok_src, ours = resolve_config(spec, tmp, [f"train.max_iter={total + 1}"], need_vocab=True)
    from albef.utils.events import EventStorage

    runner = bench_trainer()(cfg)
    device, batch = runner.device, int(cfg.train.batch_size)
    trainer = runner.build_trainer(train_batches(cfg, runner.tokenizer, batch))
    cuda = device.type == "cuda"

    def step() -> None:  # TrainerBase.train's loop body
        trainer.before_step()
        trainer.run_step()
        trainer.after_step()
        trainer.iter += 1

    trainer.iter = trainer.start_iter = 0
    trainer.max_iter = int(cfg.train.max_iter)
    times: list[float] = []
    phases, t_phase = {}, time.perf_counter()

    def phase(name: str) -> None:  # wall seconds of each part, to see where a slow run went
        nonlocal t_phase
        sync(device)
        phases[name], t_phase = time.perf_counter() - t_phase, time.perf_counter()

    with EventStorage(0) as trainer.storage:
        trainer.before_train()
        try:
            for _ in range(spec.warmup):
                step()
            phase("warmup")
            if cuda:  # events between steps: the device timeline, without a host sync per step
                torch.cuda.reset_peak_memory_stats(device)
                marks = [torch.cuda.Event(enable_timing=True) for _ in range(spec.steps + 1)]
                marks[0].record()
                for i in range(spec.steps):
                    step()
                    marks[i + 1].record()
                sync(device)
                times = [a.elapsed_time(b) / 1e3 for a, b in zip(marks, marks[1:])]
            else:
                for _ in range(spec.steps):
                    t0 = time.perf_counter()
                    step()
                    times.append(time.perf_counter() - t0)
            phase("timed")
            mem, mem_kind = peak_memory(device)
            prof_out = dict.fromkeys(("aten_ops_per_step", "kernel_launches_per_step", "kernel_launches_definition"))
            if spec.profile_steps:
                if not cuda:  # a CUDA build profiling on a machine without a GPU logs a spurious kineto ERROR line
                    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
                acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
                with torch.profiler.profile(activities=acts) as prof:
                    for _ in range(spec.profile_steps):
                        step()
                    sync(device)
                prof_out = profile_summary(prof, spec.profile_steps, cuda)
            phase("profile")
            from torch.utils.flop_counter import FlopCounterMode

            # eagerly: FlopCounterMode sees dispatched aten ops, not the fused kernels of a compiled step
            compiled_forward, trainer.forward = trainer.forward, trainer.forward_losses
            try:
                with FlopCounterMode(display=False) as fc:
                    step()
            finally:
                trainer.forward = compiled_forward
            measured = fc.get_total_flops() / batch
            phase("flop_count")
        finally:
            trainer.after_train()
    st = stats(times)
    pairs_per_s = batch / st["median"]
    if spec.flops_per_pair:
        used, used_src = spec.flops_per_pair, "--flops-per-pair"
    elif is_base_recipe(cfg):
        used, used_src = BASE_RECIPE_FLOP_PER_PAIR, "official ALBEF count for the base recipe at 256 px"
    else:
        used, used_src = measured, "measured (FlopCounterMode, one training step incl. teacher forward)"
    peak, peak_src = None, None
    if spec.peak_tflops:
        peak, peak_src = spec.peak_tflops * 1e12, "--peak-tflops"
    elif cuda:
        name = torch.cuda.get_device_name(device)
        hit = next(((k, v) for k, v in PEAK_TFLOPS if k in name), None)
        if hit:
            peak, peak_src = hit[1] * 1e12, f"table: {hit[0]} bf16 dense {hit[1]:g} TFLOP/s"
    period = cfg.train.checkpoint_period
    ckpt_steps = sum(1 for i in range(spec.warmup, spec.warmup + spec.steps) if period and (i + 1) % period == 0)
    notes = []
    if ckpt_steps:
        notes.append(f"{ckpt_steps} of the timed steps saved a checkpoint (train.checkpoint_period={period}), as training would")
    if peak and cuda and not runner.amp and not spec.peak_tflops:
        notes.append("bf16 autocast is off: the bf16 peak used for the MFU is not what fp32 can reach")
    return {
        "batch": batch, "steps": spec.steps, "warmup": spec.warmup, "step_time_s": st, "pairs_per_s": pairs_per_s,
        "peak_memory_bytes": mem, "peak_memory_kind": mem_kind, "amp": runner.amp,
        **prof_out,
        "measured_flop_per_pair": measured, "flop_per_pair_used": used, "flop_per_pair_source": used_src,
        "peak_flops": peak, "peak_flops_source": peak_src, "mfu": used * pairs_per_s / peak if peak else None,
        "hooks": [type(h).__name__ for h in trainer.hooks], "checkpoint_saves_in_timed_steps": ckpt_steps,
        "phase_wall_s": phases, "notes": notes,
        "trainable_params": sum(p.numel() for p in runner.model.parameters() if p.requires_grad),
        "vocab_size": len(runner.tokenizer), "tokenizer": tok_src, "bench_overrides": ours,
    }


def bench_eval(spec, tmp: str) -> dict:
    from albef.config import ConfigError, load_config

    cfg0 = load_config(spec.config_file, spec.opts)
    if cfg0.eval.get("retrieval") is None:
        raise ConfigError(f"{spec.config_file}: --what eval needs eval.retrieval (a RetrievalEvaluator) in the config")
    drop = [f"eval.{k}=null" for k in cfg0.eval if k != "retrieval"]  # only the retrieval evaluator gets our data
    cfg, tok_src, ours = resolve_config(spec, tmp, drop, need_vocab=True)
    n_img = spec.num_images or 100
    n_txt = spec.num_texts or 5 * n_img
    res = int(cfg.model.vision_encoder.img_size)
    runner = bench_trainer(SyntheticRetrievalSet(n_img, n_txt, res))(cfg, eval_only=True)  # the evaluator comes from build_evaluators/build_evaluator
    ev, device = runner.evaluators["retrieval"], runner.device
    model = runner.model
    if spec.warmup:  # a few images first: allocator, kernels, worker start-up paths
        small = runner.build_evaluator(cfg, "retrieval", SyntheticRetrievalSet(min(4, n_img), min(8, n_txt), res, 1), runner.tokenizer, device, runner.amp)
        small.evaluate(model)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(spec.repeats):
        sync(device)
        t0 = time.perf_counter()
        ev.evaluate(model)
        sync(device)
        times.append(time.perf_counter() - t0)
    mem, mem_kind = peak_memory(device)
    st = stats(times)
    k = ev.k_test
    pairs = (n_img * min(k, n_txt) + n_txt * min(k, n_img)) if ev.rerank else 0
    notes = ["pairs_per_s: re-ranking scores (each direction's top-k pairs; a pair in both directions' lists is "
             "fused once) per second of the whole evaluation",
             "coco5k_seconds_extrapolated assumes wall time linear in the number of images (5 texts each, k_test fixed)"]
    if k > n_img or k > n_txt:
        notes.append(f"k_test={k} exceeds the candidates here ({n_img} images, {n_txt} texts): fewer pairs per query "
                     "are re-ranked than on COCO, so the extrapolation underestimates")
    return {
        "batch": ev.batch_size, "steps": spec.repeats, "warmup": int(bool(spec.warmup)), "step_time_s": st,
        "pairs_per_s": pairs / st["median"] if pairs else None, "peak_memory_bytes": mem, "peak_memory_kind": mem_kind,
        "amp": runner.amp, "notes": notes,
        "eval": {"num_images": n_img, "num_texts": n_txt, "k_test": k, "itm_batch_size": ev.itm_batch_size,
                 "max_tokens": ev.max_tokens, "rerank": ev.rerank, "wall_s": st["median"], "images_per_s": n_img / st["median"],
                 "pairs_reranked": pairs, "pairs_reranked_per_s": pairs / st["median"],
                 "coco5k_seconds_extrapolated": st["median"] * 5000 / n_img},
        "vocab_size": len(runner.tokenizer), "tokenizer": tok_src, "bench_overrides": ours,
    }



def bench_data(spec, tmp: str) -> dict:
    from omegaconf import OmegaConf

    from albef.data import build as data_build
    from albef.data.benchmark import DataLoaderBenchmark
    from albef.data.tokenization import build_tokenizer

    n = spec.num_images or 256
    ann = write_jpegs(os.path.join(tmp, "images"), n)
    nodes = {"json": {"name": "PretrainJSON", "ann_files": [ann], "image_root": ""}}
    shard_dir = None
    if "shards" in spec.loaders:
        from albef.data.shards import make_shards

        shard_dir = os.path.join(tmp, "shards")
        make_shards([ann], "", shard_dir, shard_size=max(1, n // 8), progress=False)  # 8 shards: one per reader up to 8
        nodes["shards"] = {"name": "WebDatasetPretrain", "shards": shard_dir, "shuffle_buffer": min(100, n)}
    extra = [f"data.train={{name: PretrainJSON, ann_files: [{ann}], image_root: ''}}"]
    cfg, tok_src, ours = resolve_config(spec, tmp, extra, need_vocab=False)  # the model is not built: no data generation
    tokenizer = build_tokenizer(cfg.data.tokenizer)
    datasets = {}
    for name in spec.loaders:
        cfg.data.train = nodes[name]
        datasets[name] = data_build.build_dataset(cfg, "train")
    batch = int(cfg.train.batch_size)
    loaders = DataLoaderBenchmark(cfg, datasets, tokenizer, spec.steps, spec.repeats).benchmark_workers(spec.workers)
    first = spec.loaders[0]
    per_workers = loaders[first]
    best = max(per_workers, key=lambda w: per_workers[w]["pairs_per_s"])
    ref = str(max(spec.workers))  # the largest count tried: scaling is sublinear, so the conservative rate
    needed = None
    if spec.target_pairs_per_s:
        needed = math.ceil(spec.target_pairs_per_s / per_workers[ref]["pairs_per_s_per_worker"])
    mem, mem_kind = peak_memory(torch.device("cpu"))
    costs = per_sample_costs(ann, shard_dir, datasets[first], tokenizer, int(cfg.data.max_tokens), min(n, 128))
    return {
        "batch": batch, "steps": spec.steps, "warmup": 1, "step_time_s": per_workers[best]["batch_time_s"],
        "pairs_per_s": per_workers[best]["pairs_per_s"], "peak_memory_bytes": mem, "peak_memory_kind": mem_kind,
        "notes": [f"pairs_per_s and step_time_s: the {first} loader at its best worker count ({best})",
                  f"pairs/s per (loader, workers): median of {spec.repeats} round(s), rounds interleaving the loaders"],
        "data": {"num_images": n, "image_size": [480, 640], "resolution": int(cfg.data.transforms.image_res),
                 "transforms": OmegaConf.to_container(cfg.data.transforms, resolve=True), "workers": per_workers,
                 "loaders": loaders, "per_sample_cost_s": costs,
                 "best_workers": int(best), "target_pairs_per_s": spec.target_pairs_per_s,
                 "workers_needed_per_gpu": needed, "workers_needed_from": f"per-worker rate at {ref} worker(s), {first} loader"},
        "tokenizer": tok_src, "bench_overrides": ours,
    }


def bench_compare(spec, tmp: str) -> dict:
    """Training-step time of config variants, interleaved in one process: each ``--variant``
    (a space-separated list of KEY=VALUE on top of the command's overrides) gets its own
    trainer; after ``--warmup`` steps each, blocks of 5 steps go round the variants until each
    has ``--steps`` timed steps, so the machine's drift (+-20% an hour on a shared CPU) hits
    every variant alike. Ratios are against the first variant."""
    from albef.utils.events import EventStorage

    runs = []
    for variant in spec.variant:
        extra = [o for o in variant.split() if o]
        cfg, tok_src, ours = resolve_config(spec, tmp, extra + ["train.max_iter=1000000", "train.checkpoint_period=0"], need_vocab=True)
        runner = bench_trainer()(cfg)
        trainer = runner.build_trainer(train_batches(cfg, runner.tokenizer, int(cfg.train.batch_size)))
        trainer.iter = trainer.start_iter = 0
        trainer.max_iter = int(cfg.train.max_iter)
        trainer.storage = EventStorage(0).__enter__()
        trainer.before_train()
        runs.append({"variant": extra, "trainer": trainer, "device": runner.device, "times": []})

    def steps(run, n: int, timed: bool) -> None:
        t = run["trainer"]
        for _ in range(n):
            sync(run["device"])
            t0 = time.perf_counter()
            t.before_step()
            t.run_step()
            t.after_step()
            sync(run["device"])
            if timed:
                run["times"].append(time.perf_counter() - t0)
            t.iter += 1

    for run in runs:
        steps(run, spec.warmup, timed=False)
    while any(len(r["times"]) < spec.steps for r in runs):
        for run in runs:
            steps(run, min(5, spec.steps - len(run["times"])), timed=True)
    base = statistics.median(runs[0]["times"])
    rows = []
    for run in runs:
        ts = sorted(run["times"])
        med = statistics.median(ts)
        q1, q3 = ts[len(ts) // 4], ts[(3 * len(ts)) // 4]
        rows.append({"variant": " ".join(run["variant"]) or "(no extra overrides)", "step_time_s": {**stats(ts), "q1": q1, "q3": q3},
                     "speedup_vs_first": base / med, "pairs_per_s": int(runs[0]["trainer"].global_batch) / med})
    mem, mem_kind = peak_memory(runs[0]["device"])
    return {"batch": int(runs[0]["trainer"].global_batch), "steps": spec.steps, "compare": rows,
            "peak_memory_bytes": mem, "peak_memory_kind": mem_kind,
            "step_time_s": rows[0]["step_time_s"], "pairs_per_s": rows[0]["pairs_per_s"], "tokenizer": tok_src,
            "bench_overrides": ours,
            "notes": ["variants interleaved in blocks of 5 steps in one process; speedup = first variant's median / this one's"]}


def run_benchmark(spec: BenchmarkSpec) -> dict:
    """Run ``spec`` (in a temporary directory, removed after) and return its result: the
    :data:`COMMON_KEYS` (null where the mode does not measure them), the mode's own keys, and
    what ran where (config, overrides, device, torch version, threads, timestamp). User errors
    (a bad config key, a missing file) propagate as the library raises them."""
    modes = {"train": bench_train, "eval": bench_eval, "data": bench_data, "compare": bench_compare}
    if spec.what not in modes:
        raise ValueError(f"what={spec.what!r}: one of {sorted(modes)}")
    with tempfile.TemporaryDirectory(prefix="albef-bench-") as tmp:
        res = modes[spec.what](spec, tmp)
    dev = torch.device(spec.device)
    return {
        "what": spec.what, "config_file": spec.config_file, "overrides": list(spec.opts), "device": spec.device,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else (os.uname().machine + f", {os.cpu_count()} CPUs"),
        "torch_version": torch.__version__, "num_threads": torch.get_num_threads(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **dict.fromkeys(COMMON_KEYS), **res,
    }


def format_summary(res: dict, out: str) -> str:
    """The printed summary of a :func:`run_benchmark` result written to ``out``."""
    lines: list[str] = []
    st = res["step_time_s"]
    lines.append(f"{res['what']} | {res['config_file']} | {res['device_name']} | torch {res['torch_version']} | batch {res['batch']} | amp {res['amp']}")
    if res["what"] == "train":
        mfu = f"{100 * res['mfu']:.1f}%" if res["mfu"] is not None else "n/a (no peak FLOP/s)"
        lines.append(f"step {st['median'] * 1e3:.1f} ms median [{st['min'] * 1e3:.1f}, {st['max'] * 1e3:.1f}] over {res['steps']} steps: "
              f"{res['pairs_per_s']:.1f} pairs/s")
        lines.append(f"aten ops/step {res['aten_ops_per_step']}, kernel launches/step {res['kernel_launches_per_step']} "
              f"({res['kernel_launches_definition']})")
        lines.append(f"FLOP/pair measured {res['measured_flop_per_pair']:.3e}, used {res['flop_per_pair_used']:.3e} "
              f"({res['flop_per_pair_source']}); MFU {mfu}")
    elif res["what"] == "compare":
        for r in res["compare"]:
            s = r["step_time_s"]
            lines.append(f"{s['median'] * 1e3:7.1f} ms [IQR {s['q1'] * 1e3:.1f}, {s['q3'] * 1e3:.1f}]  x{r['speedup_vs_first']:.2f}  {r['variant']}")
    elif res["what"] == "eval":
        e = res["eval"]
        lines.append(f"{e['num_images']} images, {e['num_texts']} texts, k_test {e['k_test']}: {e['wall_s']:.2f} s, "
              f"{e['images_per_s']:.1f} images/s, {e['pairs_reranked_per_s']:.1f} re-ranked pairs/s; "
              f"COCO-5k ~{e['coco5k_seconds_extrapolated']:.0f} s (linear in images)")
    else:
        d = res["data"]
        for name, per_workers in d["loaders"].items():
            for w, r in per_workers.items():
                lines.append(f"{name} loader, workers {w}: {r['pairs_per_s']:.1f} pairs/s [{r['pairs_per_s_min']:.1f}, {r['pairs_per_s_max']:.1f}] "
                      f"({r['pairs_per_s_per_worker']:.1f} per worker)")
        c = d["per_sample_cost_s"]
        lines.append("per sample on one core (ms): " + ", ".join(f"{k[:-2]} {v * 1e3:.2f}" for k, v in c.items() if k.endswith("_s")))
        if d["workers_needed_per_gpu"] is not None:
            lines.append(f"workers needed per GPU for {d['target_pairs_per_s']:g} pairs/s: {d['workers_needed_per_gpu']} ({d['workers_needed_from']})")
    for n in res["notes"] or []:
        lines.append(f"note: {n}")
    lines.append(f"peak memory {res['peak_memory_bytes'] / 2**20:.0f} MiB ({res['peak_memory_kind']}); JSON: {out}")

    return "\n".join(lines)
