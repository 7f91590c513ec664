"""Weakly-supervised grounding accuracy (official ``grounding_eval`` of ALBEF).

For each referring expression: the model's Grad-CAM map on the patch grid is upsampled
bicubically to the original image size; each candidate box ``[x, y, w, h]`` scores
``sum(map inside the box) / area ** 0.5``; the best-scoring box is the prediction, correct
when its IoU with the ground truth is at least 0.5, IoU computed with the official
inclusive-pixel arithmetic (``x2 = x + w - 1``).

The registered ``grounding`` metric reports, per split, ``accuracy`` (candidates of
``dets.json``), ``accuracy_cocos`` (of ``cocos.json``, when given) and
``accuracy_multi_box`` / ``num_multi_box`` (expressions whose image has two or more
candidates: one candidate is always right or always wrong).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from albef_plugin.metrics.base import BaseMetric, EvalContext, as_context, autocast_for, to_device
from albef_plugin.registry import registry

__all__ = ["GroundingMetric", "box_iou_inclusive", "upsample_heatmap", "score_boxes", "pick_box"]

Box = Sequence[float]


def box_iou_inclusive(box1: Box, box2: Box) -> float:
    """IoU of ``[x, y, w, h]`` boxes as the official ``computeIoU``: pixels are inclusive
    (the last column is ``x + w - 1``) and boxes that only touch do not intersect."""
    x1, y1 = max(box1[0], box2[0]), max(box1[1], box2[1])
    x2 = min(box1[0] + box1[2] - 1, box2[0] + box2[2] - 1)
    y2 = min(box1[1] + box1[3] - 1, box2[1] + box2[3] - 1)
    inter = (x2 - x1 + 1) * (y2 - y1 + 1) if x1 < x2 and y1 < y2 else 0.0
    union = box1[2] * box1[3] + box2[2] * box2[3] - inter
    return float(inter) / float(union)


def upsample_heatmap(heatmap: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[g, g]`` -> ``[height, width]``, bicubic (align_corners False), in fp32."""
    return F.interpolate(heatmap.float()[None, None], size=(int(height), int(width)),
                         mode="bicubic", align_corners=False)[0, 0]


def score_boxes(heatmap: torch.Tensor, boxes: Sequence[Box], alpha: float = 0.5) -> torch.Tensor:
    """``sum(heatmap[y:y+h, x:x+w]) / (w * h) ** alpha`` for each box (integer-truncated
    slices, as the official code); ``heatmap`` is already at image size."""
    scores = []
    for x, y, w, h in (b[:4] for b in boxes):
        region = heatmap[int(y):int(y + h), int(x):int(x + w)]
        scores.append(region.sum() / (w * h) ** alpha)
    return torch.stack(scores)


def pick_box(heatmap: torch.Tensor, height: int, width: int, boxes: Sequence[Box],
             alpha: float = 0.5) -> int:
    """Index of the best box for a patch-grid ``heatmap`` (first of ties)."""
    return int(score_boxes(upsample_heatmap(heatmap, height, width), boxes, alpha).argmax())


@registry.register_metric("grounding")
class GroundingMetric(BaseMetric):
    """Grounding accuracy (percent) of Grad-CAM box choices; see the module docstring.

    The model needs ``gradcam(image, input_ids, attention_mask, mode)`` (``albef_grounding``);
    the dataset ``refs`` (``GroundingEvalDataset``).
    """

    @dataclass
    class Config:
        gradcam_mode: Optional[str] = None   # itm | itc; None = the model's gradcam_mode
        alpha: float = 0.5                   # box score = sum / area ** alpha
        iou_threshold: float = 0.5
        save_predictions: bool = False       # <save_dir>/<split>_<dataset>_predictions.json

    def check_config(self, config: Any) -> None:
        if config.gradcam_mode not in (None, "itm", "itc"):
            raise ValueError(f"gradcam_mode={config.gradcam_mode!r}: use itm, itc or null (the model's)")
        if not 0 < config.iou_threshold <= 1:
            raise ValueError(f"iou_threshold={config.iou_threshold} must lie in (0, 1]")

    def evaluate(self, model: Any, dataset: Any, context: Any = None) -> Dict[str, float]:
        context: EvalContext = as_context(context)
        # Every rank evaluates every expression (no sharding): the returned numbers are then
        # the same on all ranks without a gather of per-expression rows.
        if not hasattr(getattr(model, "module", model), "gradcam") or not hasattr(dataset, "refs"):
            raise TypeError(f"the grounding metric needs a model with gradcam() (albef_grounding; "
                            f"got {type(model).__name__}) and a grounding eval dataset (got "
                            f"{type(dataset).__name__})")
        model = getattr(model, "module", model)  # DDP wrapper: gradcam() is the model's
        rows: List[Dict[str, Any]] = []
        for batch in context.loader(dataset, shard=False):
            batch = to_device(batch, context.device)
            with autocast_for(context.device, context.precision):
                maps = model.gradcam(batch["image"], batch["input_ids"], batch["attention_mask"],
                                     mode=self.config.gradcam_mode).sentence
            for index, heatmap in zip(batch["index"].tolist(), maps.float().cpu()):
                rows.append(self._judge(dataset.refs[index], heatmap))
        if self.config.save_predictions:
            context.save_json(rows)
        return self.summarize(rows)

    def _judge(self, ref: Any, heatmap: torch.Tensor) -> Dict[str, Any]:
        full = upsample_heatmap(heatmap, ref.height, ref.width)
        row: Dict[str, Any] = {"ref_id": ref.ref_id, "num_candidates": len(ref.dets)}
        for name, boxes in (("dets", ref.dets), ("cocos", ref.cocos)):
            if boxes is None:
                continue
            box = boxes[int(score_boxes(full, boxes, self.config.alpha).argmax())]
            row[f"{name}_box"] = list(box)
            row[f"{name}_correct"] = box_iou_inclusive(ref.box, box) >= self.config.iou_threshold
        return row

    @staticmethod
    def summarize(rows: Sequence[Dict[str, Any]]) -> Dict[str, float]:
        def percent(items: Sequence[Dict[str, Any]], key: str) -> float:
            return 100.0 * sum(bool(r[key]) for r in items) / max(1, len(items))

        multi = [r for r in rows if r["num_candidates"] >= 2]
        out = {"accuracy": percent(rows, "dets_correct"), "num_refs": float(len(rows)),
               "accuracy_multi_box": percent(multi, "dets_correct"), "num_multi_box": float(len(multi))}
        if rows and "cocos_correct" in rows[0]:
            out["accuracy_cocos"] = percent(rows, "cocos_correct")
        return out
