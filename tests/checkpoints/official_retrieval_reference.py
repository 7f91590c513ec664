"""Formula-level reference of the official retrieval model (``model_retrieval.py``), computed
straight from a fine-tuned state dict (``mscoco.pth`` layout: ``text_encoder.*``, no MLM head,
``idx_queue``), written from the paper and the official formulas, not from the model code.

Training forward, in the official order: online features; EMA of the momentum copies
(``m * theta_m + (1 - m) * theta``); momentum features; multi-positive targets
``pos = idx == [idx_batch | idx_queue]`` normalised per row; soft targets
``alpha * softmax(s_m) + (1 - alpha) * y``; ``L_itc = (L_i2t + L_t2i) / 2`` with the un-clamped
``temp``; ITM cross-entropy over (positives, text-negative image, negative text-image); then
the momentum features and ``idx`` are written at ``queue_ptr``.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

from .official_reference import _linear, bert_layers, embeddings, vit

State = Dict[str, torch.Tensor]
TEXT = "text_encoder."
MOMENTUM_CHILDREN = ("visual_encoder", "vision_proj", "text_encoder", "text_proj")


def _features(sd: State, image, ids, mask, sizes, suffix: str = ""):
    """Image tokens / feature and text tokens / feature of the online ("") or momentum ("_m")
    model (momentum: the ``*_m`` tensors read under the online names)."""
    if suffix:
        sd = {k.replace(f"{c}_m.", f"{c}."): v for k, v in sd.items() for c in MOMENTUM_CHILDREN
              if k.startswith(f"{c}_m.")}
    image_embeds = vit(sd, image, sizes.vit_heads)
    image_feat = F.normalize(_linear(image_embeds[:, 0], sd, "vision_proj"), dim=-1)
    text = embeddings(sd, ids, prefix=TEXT)
    text_embeds = bert_layers(sd, text, mask, 0, sizes.fusion_layer, sizes.bert_heads,
                              prefix=TEXT, fusion_layer=sizes.fusion_layer)
    text_feat = F.normalize(_linear(text_embeds[:, 0], sd, "text_proj"), dim=-1)
    return image_embeds, image_feat, text_embeds, text_feat


def itm_logits(sd: State, text_embeds, mask, image_embeds, sizes) -> torch.Tensor:
    fused = bert_layers(sd, text_embeds, mask, sizes.fusion_layer, sizes.layers, sizes.bert_heads,
                        image_embeds, prefix=TEXT, fusion_layer=sizes.fusion_layer)
    return _linear(fused[:, 0], sd, "itm_head")


def eval_outputs(sd: State, image, ids, mask, sizes) -> Dict[str, torch.Tensor]:
    """What ``encode_image`` / ``encode_text`` / ``itm_logits`` return for these weights."""
    image_embeds, image_feat, text_embeds, text_feat = _features(sd, image, ids, mask, sizes)
    return {"image_embeds": image_embeds, "image_feat": image_feat, "text_embeds": text_embeds,
            "text_feat": text_feat, "itm": itm_logits(sd, text_embeds, mask, image_embeds, sizes)}


def ema(sd: State, momentum: float) -> State:
    """The state dict after one official ``_momentum_update``."""
    out = dict(sd)
    for key, value in sd.items():
        child = key.split(".")[0]
        if child.endswith("_m") and child[:-2] in MOMENTUM_CHILDREN and value.is_floating_point():
            out[key] = value * momentum + sd[child[:-2] + key[len(child):]] * (1.0 - momentum)
    return out


def training_step(sd: State, image, ids, mask, idx, alpha: float, momentum: float, sizes,
                  neg_image: torch.Tensor, neg_text: torch.Tensor) -> Dict[str, torch.Tensor]:
    """ITC and ITM losses (ITM with the given hard negatives) and the state after the step."""
    image_embeds, image_feat, text_embeds, text_feat = _features(sd, image, ids, mask, sizes)
    idx_all = torch.cat([idx, sd["idx_queue"][0]])
    positives = (idx[:, None] == idx_all[None, :]).float()
    targets = positives / positives.sum(1, keepdim=True)

    after = ema(sd, momentum)
    _, image_feat_m, _, text_feat_m = _features(after, image, ids, mask, sizes, suffix="_m")
    temp = sd["temp"]
    image_all = torch.cat([image_feat_m.t(), sd["image_queue"]], dim=1)
    text_all = torch.cat([text_feat_m.t(), sd["text_queue"]], dim=1)
    losses = []
    for feat, feat_m, other_all in ((image_feat, image_feat_m, text_all),
                                    (text_feat, text_feat_m, image_all)):
        soft = alpha * F.softmax(feat_m @ other_all / temp, dim=1) + (1 - alpha) * targets
        losses.append(-(F.log_softmax(feat @ other_all / temp, dim=1) * soft).sum(1).mean())
    itc = (losses[0] + losses[1]) / 2

    batch = image.shape[0]
    logits = torch.cat([
        itm_logits(sd, text_embeds, mask, image_embeds, sizes),
        itm_logits(sd, text_embeds, mask, image_embeds[neg_image], sizes),
        itm_logits(sd, text_embeds[neg_text], mask[neg_text], image_embeds, sizes)])
    labels = torch.cat([torch.ones(batch), torch.zeros(2 * batch)]).long()
    itm = F.cross_entropy(logits, labels)

    ptr, queue_size = int(sd["queue_ptr"]), sd["image_queue"].shape[1]
    columns = torch.arange(ptr, ptr + batch) % queue_size
    for name, values in (("image_queue", image_feat_m.t()), ("text_queue", text_feat_m.t()),
                         ("idx_queue", idx[None])):
        after[name] = sd[name].clone()
        after[name][:, columns] = values.to(after[name].dtype)
    after["queue_ptr"] = torch.tensor([(ptr + batch) % queue_size])
    return {"itc": itc, "itm": itm, "state": after}
