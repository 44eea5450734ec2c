"""ONNX export of the dual-encoder half a retrieval deployment serves, checked against eager PyTorch.

    model, preprocess = albef.load("output/synthetic/model_final.pth", device="cpu")
    result = export_onnx(model, preprocess, "export/")     # image_encoder.onnx, text_encoder.onnx, itm_scorer.onnx

Three graphs, each a small module around the model's own methods (no second copy of the
forward), exported with ``torch.onnx.export(dynamo=True)`` (the ``torch.export`` exporter;
``exporter="torchscript"`` selects the deprecated TorchScript tracer):

* ``image_encoder.onnx``: ``pixel_values`` [B, 3, H, W] -> ``image_feat`` [B, E] (projected,
  L2-normalised: ``model.encode_image``) and ``image_embeds`` [B, 1+N, Dv] (the ViT tokens
  the fused scorer attends to);
* ``text_encoder.onnx``: ``input_ids``, ``attention_mask`` [B, L] (int64) -> ``text_feat``
  [B, E] and ``text_embeds`` [B, L, H] (``model.encode_text``);
* ``itm_scorer.onnx`` (models with an ITM head and one image per text): ``text_embeds`` [B, L, H],
  ``attention_mask`` [B, L], ``image_embeds`` [B, 1+N, Dv] -> ``itm_logit`` [B] (the "match"
  logit) and ``itm_probability`` [B] (``model.itm_logits``, softmax over no-match/match).

B is dynamic in every graph, L in the text graphs (up to the position table); H, W are the
checkpoint's resolution. A model without projections exports the token outputs only.
Every file is run with onnxruntime (CPU) at two batch sizes and compared with the eager
model; the maximum absolute differences go into ``manifest.json`` with the preprocessing
(resolution, mean/std, max_tokens, tokenization) and the tokenizer (``tokenizer/``).
"""
from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

IMAGE_FILE, TEXT_FILE, ITM_FILE, MANIFEST_FILE, TOKENIZER_DIR = (
    "image_encoder.onnx", "text_encoder.onnx", "itm_scorer.onnx", "manifest.json", "tokenizer")
EXPORTERS = ("dynamo", "torchscript")
#: the oldest opset the dynamo exporter writes (it "converts" to an older one by keeping 18 and logging a traceback)
MIN_DYNAMO_OPSET = 18
#: a file whose eager/onnxruntime difference exceeds this (times max(1, max |eager|)) is an error
DEFAULT_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """An export that cannot be done or does not reproduce the eager model (message names the file)."""


def require_onnx() -> None:
    """Raise ImportError naming the ``albef[export]`` extra when onnx, onnxruntime or onnxscript is missing."""
    missing = []
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed: pip install 'albef[export]'")


# --------------------------------------------------------------------------- the exported modules
class ImageEncoderGraph(nn.Module):
    """``pixel_values`` [B, 3, H, W] -> (``image_feat`` [B, E], ``image_embeds`` [B, 1+N, Dv]),
    or (``image_embeds``,) without projections: ``model.encode_image``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        embeds, feat = self.model.encode_image(pixel_values)
        return (embeds,) if feat is None else (feat, embeds)


class TextEncoderGraph(nn.Module):
    """``input_ids``, ``attention_mask`` [B, L] -> (``text_feat`` [B, E], ``text_embeds`` [B, L, H]),
    or (``text_embeds``,) without projections: ``model.encode_text``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        embeds, feat = self.model.encode_text(input_ids, attention_mask)
        return (embeds,) if feat is None else (feat, embeds)


class ITMScorerGraph(nn.Module):
    """``text_embeds`` [B, L, H], ``attention_mask`` [B, L], ``image_embeds`` [B, 1+N, Dv] ->
    (``itm_logit`` [B], ``itm_probability`` [B]): pair b is text b with image b, through
    ``model.itm_logits`` (the fusion encoder and the ITM head)."""

    def __init__(self, model: nn.Module, head: str = "itm"):
        super().__init__()
        self.model, self.head_name = model, head

    def forward(self, text_embeds: torch.Tensor, attention_mask: torch.Tensor, image_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model.itm_logits(text_embeds, attention_mask, image_embeds, self.head_name)  # [B, 2]
        return logits[:, 1], logits.softmax(dim=-1)[:, 1]


@dataclass
class GraphSpec:
    """One graph to export: its module, names, example inputs and dynamic axes."""

    name: str
    file: str
    module: nn.Module
    input_names: list[str]
    output_names: list[str]
    example: tuple[torch.Tensor, ...]
    dynamic: dict[str, dict[int, tuple[str, int | None]]]  # input -> {axis: (name, max)}
    check_inputs: Callable[[int], tuple[torch.Tensor, ...]]  # batch size -> inputs


@dataclass
class ExportedGraph:
    """A written file: ``max_abs_diff[batch][output]`` (onnxruntime vs eager), ``seconds`` to export."""

    name: str
    path: str
    bytes: int
    seconds: float
    inputs: list[dict]
    outputs: list[dict]
    max_abs_diff: dict[str, dict[str, float]]

    @property
    def worst_diff(self) -> float:
        return max(v for per in self.max_abs_diff.values() for v in per.values())


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote: the graphs, ``manifest`` (its path) and, when the ITM
    scorer was asked for but not shipped, ``skipped`` ({graph: reason})."""

    out_dir: str
    graphs: list[ExportedGraph]
    manifest: str
    skipped: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- inputs
def sample_texts(tokenizer: Any, n: int, max_words: int, seed: int) -> list[str]:
    """n texts of 1..max_words whole words drawn from the tokenizer's vocabulary (varied
    lengths, so a batch has padding)."""
    words = sorted(w for w in tokenizer.get_vocab() if w.isalpha() and w.isascii() and len(w) > 1)
    if not words:
        raise ExportError("the tokenizer's vocabulary has no plain words to build check texts from")
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        k = 1 + int(torch.randint(max_words, (1,), generator=g)) if i else max_words  # the first one is the longest
        idx = torch.randint(len(words), (k,), generator=g).tolist()
        out.append(" ".join(words[j] for j in idx))
    return out


def _pixels(n: int, res: int, seed: int) -> torch.Tensor:
    # normalised images are roughly N(0, 1) per pixel
    return torch.randn(n, 3, res, res, generator=torch.Generator().manual_seed(seed))


def graph_specs(model: nn.Module, preprocess: Any, itm: bool = True) -> tuple[list[GraphSpec], dict[str, str]]:
    """The graphs this model can export, and ``{graph: reason}`` for the ITM scorer when it cannot."""
    res, max_tokens = preprocess.image_res, preprocess.max_tokens
    max_len = int(getattr(getattr(model.text_encoder, "config", None), "max_position_embeddings", max_tokens))
    has_proj = getattr(model, "vision_proj", None) is not None and getattr(model, "text_proj", None) is not None
    batch, length = ("batch", None), ("length", max_len)

    def texts(n: int, seed: int):
        t = preprocess.text(sample_texts(preprocess.tokenizer, n, max(1, max_tokens - 2), seed))
        return t.input_ids, t.attention_mask

    specs = [
        GraphSpec("image_encoder", IMAGE_FILE, ImageEncoderGraph(model), ["pixel_values"],
                  (["image_feat"] if has_proj else []) + ["image_embeds"], (_pixels(2, res, 0),),
                  {"pixel_values": {0: batch}}, lambda n: (_pixels(n, res, 100 + n),)),
        GraphSpec("text_encoder", TEXT_FILE, TextEncoderGraph(model), ["input_ids", "attention_mask"],
                  (["text_feat"] if has_proj else []) + ["text_embeds"], texts(2, 0),
                  {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}},
                  lambda n: texts(n, 100 + n)),
    ]
    skipped: dict[str, str] = {}
    if itm:
        reason = None
        if not model.has_head("itm"):
            reason = f"the model has no ITM head (heads: {sorted(model.heads) or 'none'})"
        elif getattr(model.fusion, "num_visual_inputs", 1) != 1:
            reason = f"the fusion encoder takes {model.fusion.num_visual_inputs} images per text; the scorer graph takes one"
        if reason:
            skipped["itm_scorer"] = reason
        else:
            def fused_inputs(n: int, seed: int):
                ids, mask = texts(n, seed)
                with torch.no_grad():
                    text_embeds, _ = model.encode_text(ids, mask)
                    image_embeds, _ = model.encode_image(_pixels(n, res, seed))
                return text_embeds, mask, image_embeds

            specs.append(GraphSpec("itm_scorer", ITM_FILE, ITMScorerGraph(model), ["text_embeds", "attention_mask", "image_embeds"],
                                   ["itm_logit", "itm_probability"], fused_inputs(2, 0),
                                   {"text_embeds": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}, "image_embeds": {0: batch}},
                                   lambda n: fused_inputs(n, 100 + n)))
    return specs, skipped


# --------------------------------------------------------------------------- export and check
def _export_one(spec: GraphSpec, path: str, opset: int | None, exporter: str) -> None:
    spec.module.eval()
    kwargs: dict[str, Any] = {"input_names": spec.input_names, "output_names": spec.output_names}
    if opset is not None:
        kwargs["opset_version"] = int(opset)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and axis-renaming chatter; correctness is checked below
        if exporter == "dynamo":
            dims: dict[str, torch.export.Dim] = {}
            for axes in spec.dynamic.values():
                for name, hi in axes.values():
                    if name not in dims:
                        dims[name] = torch.export.Dim(name, min=1, max=hi) if hi else torch.export.Dim(name, min=1)
            shapes = tuple({axis: dims[n] for axis, (n, _) in spec.dynamic.get(i, {}).items()} or None for i in spec.input_names)
            params = sum(p.numel() * p.element_size() for p in spec.module.parameters())
            torch.onnx.export(spec.module, spec.example, path, dynamo=True, dynamic_shapes=shapes, verbose=False,
                              external_data=params > 1_800_000_000, **kwargs)  # one file below protobuf's 2 GB
        else:
            axes = {i: {a: n for a, (n, _) in ax.items()} for i, ax in spec.dynamic.items()}
            for o in spec.output_names:
                axes[o] = {0: "batch"}
            torch.onnx.export(spec.module, spec.example, path, dynamo=False, dynamic_axes=axes, **kwargs)


def _io(model_proto, which: str) -> list[dict]:
    """name, dtype and shape (dimension names for dynamic axes) of a graph's inputs or outputs."""
    import onnx

    out = []
    for v in getattr(model_proto.graph, which):
        t = v.type.tensor_type
        shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]
        out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": shape})
    return out


def compare_with_eager(path: str, module: nn.Module, inputs: Sequence[torch.Tensor], input_names: Sequence[str],
                       output_names: Sequence[str]) -> dict[str, float]:
    """Max absolute difference per output between onnxruntime (CPU) on ``path`` and ``module`` eager."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    got = sess.run(list(output_names), {n: x.numpy() for n, x in zip(input_names, inputs)})
    with torch.no_grad():
        ref = module(*inputs)
    out = {}
    for name, g, r in zip(output_names, got, ref):
        if tuple(g.shape) != tuple(r.shape):
            raise ExportError(f"{path}: output {name} has shape {list(g.shape)} in onnxruntime, {list(r.shape)} eager")
        out[name] = float((torch.from_numpy(g) - r.float()).abs().max())
    return out


def export_onnx(model: nn.Module, preprocess: Any, out_dir: str, *, opset: int | None = None, itm: bool = True,
                exporter: str = "dynamo", check_batches: Sequence[int] = (1, 5), tolerance: float = DEFAULT_TOLERANCE,
                source: str | None = None, log: Callable[[str], None] | None = None) -> ExportResult:
    """Export ``model`` (float32, CPU) to ``out_dir`` and check every file with onnxruntime.

    Args:
        preprocess: the model's :class:`~albef.data.preprocess.Preprocess` (resolution, tokenizer).
        opset: ONNX opset (default: the exporter's).
        itm: also try the fused ITM scorer; if it cannot be exported or does not match,
            it is left out and the reason recorded (``ExportResult.skipped``, the manifest).
        exporter: ``dynamo`` (``torch.onnx.export(dynamo=True)``) or ``torchscript`` (legacy).
        check_batches: batch sizes run through onnxruntime and eager (two: the dynamic axis).
        tolerance: an encoder whose max abs difference exceeds ``tolerance * max(1, max |eager|)``
            raises :class:`ExportError`.
    """
    require_onnx()
    import onnx

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if opset is not None and exporter == "dynamo" and opset < MIN_DYNAMO_OPSET:
        raise ValueError(f"opset {opset}: the dynamo exporter writes opset >= {MIN_DYNAMO_OPSET}; "
                         f"use the torchscript exporter for an older opset")
    if next(model.parameters()).device.type != "cpu" or next(model.parameters()).dtype != torch.float32:
        raise ExportError("export a float32 model on the CPU: albef.load(..., device='cpu', dtype='float32')")
    log = log or (lambda s: None)
    os.makedirs(out_dir, exist_ok=True)
    model.eval()
    specs, skipped = graph_specs(model, preprocess, itm)
    graphs: list[ExportedGraph] = []
    opset_written = None
    for spec in specs:
        path = os.path.join(out_dir, spec.file)
        t0 = time.perf_counter()
        try:
            _export_one(spec, path, opset, exporter)
            seconds = time.perf_counter() - t0
            proto = onnx.load(path)
            onnx.checker.check_model(proto)
            written = next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
            if opset is not None and written != opset:
                raise ExportError(f"{path}: asked for opset {opset}, the exporter wrote opset {written}")
            diffs, worst_rel = {}, 0.0
            for b in check_batches:
                inputs = spec.check_inputs(int(b))
                diffs[f"batch_{b}"] = d = compare_with_eager(path, spec.module, inputs, spec.input_names, spec.output_names)
                with torch.no_grad():
                    scale = max(1.0, max(float(r.abs().max()) for r in spec.module(*inputs)))
                worst_rel = max(worst_rel, max(d.values()) / scale)
            if worst_rel > tolerance:
                raise ExportError(f"{path}: onnxruntime differs from eager PyTorch by {worst_rel:.3g} (relative to max(1, |eager|)), "
                                  f"above the tolerance {tolerance:g}: {diffs}")
        except Exception as e:
            if spec.name != "itm_scorer":
                if isinstance(e, ExportError):
                    raise
                raise ExportError(f"{path}: export failed ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})") from e
            # the fused scorer is optional: record why and ship the encoders
            skipped[spec.name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            for p in (path, path + ".data"):
                if os.path.exists(p):
                    os.remove(p)
            log(f"skipped {spec.file}: {skipped[spec.name]}")
            continue
        size = os.path.getsize(path) + (os.path.getsize(path + ".data") if os.path.exists(path + ".data") else 0)
        g = ExportedGraph(spec.name, path, size, seconds, _io(proto, "input"), _io(proto, "output"), diffs)
        graphs.append(g)
        opset_written = written
        log(f"wrote {path} ({size / 1e6:.2f} MB, {seconds:.1f} s); max abs diff vs eager: "
            + ", ".join(f"{k} " + " ".join(f"{o} {v:.2e}" for o, v in per.items()) for k, per in diffs.items()))
    manifest = write_manifest(out_dir, model, preprocess, graphs, skipped, exporter, opset_written, source)
    return ExportResult(out_dir, graphs, manifest, skipped)


def write_manifest(out_dir: str, model: nn.Module, preprocess: Any, graphs: Sequence[ExportedGraph], skipped: dict[str, str],
                   exporter: str, opset: int | None, source: str | None) -> str:
    """``manifest.json`` (what a deployment needs to feed the files) and ``tokenizer/`` in ``out_dir``."""
    import onnx
    import onnxruntime

    tok_dir = os.path.join(out_dir, TOKENIZER_DIR)
    preprocess.tokenizer.save_pretrained(tok_dir)
    temp = getattr(model, "temp", None)
    manifest = {
        "format": "albef-onnx/1",
        "source": source,
        "exporter": f"torch.onnx.export(dynamo={exporter == 'dynamo'})",
        "opset": opset,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "preprocess": {
            "image_res": preprocess.image_res, "resize": "bicubic, to image_res x image_res (no crop)",
            "mean": list(preprocess.transform.mean), "std": list(preprocess.transform.std), "pixel_scale": "RGB / 255, then (x - mean) / std",
            "max_tokens": preprocess.max_tokens, "tokenization": preprocess.tokenization, "tokenizer": TOKENIZER_DIR,
            "tokenizer_files": sorted(os.listdir(tok_dir)),
        },
        "embed_dim": getattr(model, "embed_dim", None),
        "temperature": None if temp is None else float(temp.detach()),
        "graphs": {g.name: {"file": os.path.basename(g.path), "bytes": g.bytes, "export_seconds": round(g.seconds, 3),
                            "inputs": g.inputs, "outputs": g.outputs, "max_abs_diff": g.max_abs_diff} for g in graphs},
        "not_exported": skipped,
    }
    path = os.path.join(out_dir, MANIFEST_FILE)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    return path
