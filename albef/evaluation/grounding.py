"""Weakly supervised grounding: Grad-CAM heat maps score candidate boxes (official ``grounding_eval``)."""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch.utils.data import Subset

from albef.evaluation.base import Evaluator, LoaderFn, shard_indices
from albef.metrics.box_iou import box_iou_inclusive
from albef.data.preprocess import TextBatch
from albef.modeling.gradcam import box_scores, upsample_map
from albef.registry import EVALUATOR_REGISTRY
from albef.utils import comm

logger = logging.getLogger("albef.evaluation")


@EVALUATOR_REGISTRY.register()
class GroundingEvaluator(Evaluator):
    """``<prefix>/<split>_acc`` per split of the refs (RefCOCO+: val, testA, testB) and
    ``<prefix>/acc`` over all: the percent of expressions whose best-scoring candidate box
    has IoU >= ``iou_threshold`` with the ground truth.

    Per expression: the Grad-CAM map (:mod:`albef.modeling.gradcam`) is upsampled
    bicubically to the original image size, every candidate box is scored by
    ``sum(map inside the box) / area ** alpha`` and the arg-max is the prediction (a box is
    always chosen, also when every score is 0: the official loop then kept a stale box).

    Args:
        split: ``data.<split>`` (a :class:`~albef.data.datasets.grounding.GroundingEvalJSON`).
        gradcam: ``itm`` (official default: ITM match logit on fusion cross-attention
            ``layer``) or ``itc`` (similarity on ViT ``block``).
        layer: fusion layer (0-based; official block_num 8 = fusion layer 2).
        block: ViT block of the ITC variant (official 8).
        alpha: box-area exponent (official 0.5).
        iou_threshold: official 0.5.
    """

    def __init__(
        self,
        *,
        dataset: Any,
        loader_fn: LoaderFn,
        prefix: str,
        split: str = "test",
        batch_size: int = 32,
        gradcam: str = "itm",
        layer: int = 2,
        block: int = 8,
        head: str = "itm",
        alpha: float = 0.5,
        iou_threshold: float = 0.5,
        device: torch.device | str = "cpu",
        amp: bool = False,
    ):
        super().__init__(dataset=dataset, prefix=prefix, split=split, device=device, amp=amp)
        if gradcam not in ("itm", "itc"):
            raise ValueError(f"eval.{prefix}.gradcam must be 'itm' or 'itc', got {gradcam!r}")
        for needed in ("ref", "image_size"):
            if not hasattr(dataset, needed):
                raise ValueError(f"eval.{prefix}: data.{split} ({type(dataset).__name__}) has no boxes; use GroundingEvalJSON")
        self.loader_fn, self.batch_size = loader_fn, int(batch_size)
        self.gradcam, self.layer, self.block, self.head = gradcam, int(layer), int(block), head
        self.alpha, self.iou_threshold = float(alpha), float(iou_threshold)

    def check(self, model) -> None:
        if self.gradcam == "itm":
            if not model.has_head(self.head):
                raise ValueError(f"eval.{self.prefix}: ITM Grad-CAM needs the ITM head model.heads.{self.head}")
            n = len(model.fusion.layer)
            if not -n <= self.layer < n:
                raise ValueError(f"eval.{self.prefix}.layer={self.layer}: the fusion encoder has {n} layers")
        else:
            if getattr(model, "vision_proj", None) is None:
                raise ValueError(f"eval.{self.prefix}: ITC Grad-CAM needs projections (model.embed_dim)")
            n = len(getattr(model.vision_encoder, "vit", model.vision_encoder).blocks)
            if not -n <= self.block < n:
                raise ValueError(f"eval.{self.prefix}.block={self.block}: the vision encoder has {n} blocks")

    def heat_maps(self, model, batch: dict[str, Any]) -> torch.Tensor:
        """[B, gh, gw] sentence maps of the batch (tensors on the device)."""
        text = TextBatch(batch["input_ids"], batch["attention_mask"])
        with self.autocast():
            return model.gradcam(batch["image"], text, mode=self.gradcam, layer=self.layer, block=self.block, head=self.head).sentence

    def hit(self, heat: torch.Tensor, i: int) -> bool:
        """Whether the heat map [gh, gw] of dataset entry ``i`` picks a correct box: upsampled to
        the original image, the best-scoring candidate has IoU >= ``iou_threshold`` with the truth."""
        ref = self.dataset.ref(i)
        w, h = self.dataset.image_size(i)
        dets = torch.tensor(ref["dets"], dtype=torch.float64)
        pick = int(box_scores(upsample_map(heat, h, w), dets, self.alpha).argmax())
        return float(box_iou_inclusive(dets[pick], torch.tensor(ref["bbox"], dtype=torch.float64))) >= self.iou_threshold

    def evaluate(self, model) -> dict[str, float]:
        self.check(model)
        was_training = model.training
        model.eval()
        part = shard_indices(len(self.dataset), comm.get_rank(), comm.get_world_size())
        splits = sorted({r["split"] for r in self.dataset.refs.values()})
        correct = torch.zeros(len(splits), dtype=torch.float64)
        total = torch.zeros(len(splits), dtype=torch.float64)
        try:
            if len(part):
                for batch in self.loader_fn(Subset(self.dataset, part), self.batch_size):
                    batch.pop("skipped", None)
                    batch = {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                    maps = self.heat_maps(model, batch).float().cpu()
                    for j, i in enumerate(batch["index"].tolist()):  # boxes and image sizes differ per expression
                        s = splits.index(self.dataset.ref(i)["split"])
                        total[s] += 1
                        correct[s] += float(self.hit(maps[j], i))
        finally:
            model.train(was_training)
        correct, total = comm.all_reduce_sum(correct.to(self.device)).cpu(), comm.all_reduce_sum(total.to(self.device)).cpu()
        out = {}
        for s, name in enumerate(splits):
            if total[s] > 0:
                out[f"{self.prefix}/{name}_acc"] = 100.0 * float(correct[s] / total[s])
        out[f"{self.prefix}/acc"] = 100.0 * float(correct.sum() / total.sum().clamp(min=1))
        return out
