"""Mapping a read state dict onto a model, the model-independent steps: the DDP prefix,
position embeddings, queues, momentum copies, tied weights, and the table of tolerated
differences that hold for every model (see the package docstring; per-model renames are in
filters.py)."""
from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from albef_plugin.models.checkpoints.reading import FORMAT_STATE_DICT, CheckpointError

__all__ = ["LoadResult", "TOLERATED", "QUEUE_KEYS", "resample_pos_embed", "image_size_of",
           "load_state_dict_checked", "group_keys_by_prefix", "strip_module_prefix",
           "resample_vit_pos_embeds", "keep_model_queues",
           "momentum_pairs", "copy_online_to_momentum", "absent_momentum_children"]

logger = logging.getLogger(__name__)

QUEUE_KEYS = ("image_queue", "text_queue", "idx_queue", "queue_ptr")

# Model-independent tolerated differences: (side, regex on the key, formats it applies to
# (None = all), reason). What depends on the model (an MLM head a task file lacks, an idx_queue
# a pre-training file lacks, ...) is in that model's checkpoint filters (filters.py).
TOLERATED: Tuple[Tuple[str, str, Optional[Tuple[str, ...]], str], ...] = (
    ("unexpected", r"(^|\.)position_ids$", None,
     "BERT position ids: a constant buffer, rebuilt by the model (non-persistent here)"),
    ("unexpected", r"(^|\.)token_type_ids$", None,
     "BERT token type ids: a constant buffer (ALBEF always uses type 0)"),
)


@dataclass
class LoadResult:
    """What :func:`load_checkpoint` did.

    Attributes:
        missing: model keys absent from the file and not tolerated (left as initialised).
        unexpected: file keys the model has no use for, not tolerated (ignored).
        resampled: position embeddings resampled to the model's grid.
        tolerated: ``key -> reason`` for every expected difference (see :data:`TOLERATED`),
            tied weights filled through their partner, queues kept from the model.
        format: the detected file format.
    """

    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    resampled: List[str] = field(default_factory=list)
    tolerated: Dict[str, str] = field(default_factory=dict)
    format: str = FORMAT_STATE_DICT


# -------------------------------------------------------------------------- key mapping
def strip_module_prefix(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Drop the ``module.`` prefix of a state dict saved from a DDP-wrapped model."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: Tuple[int, int],
                       num_prefix_tokens: int = 1) -> torch.Tensor:
    """Resample a ViT position embedding to another patch grid (official ``interpolate_pos_embed``).

    The prefix (class) tokens are kept as they are; the patch tokens are reshaped to their
    square grid, resized with ``F.interpolate(mode="bicubic", align_corners=False)`` in fp32
    and flattened back.

    Args:
        pos_embed: ``[1, P + g*g, C]``.
        new_grid: ``(h, w)`` patches of the target model.
        num_prefix_tokens: ``P`` (1: the class token).

    Returns:
        ``[1, P + h*w, C]`` in the input dtype.
    """
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old_side = int(round(patches.shape[1] ** 0.5))
    if old_side * old_side != patches.shape[1]:
        raise CheckpointError(f"position embedding with {patches.shape[1]} patch tokens is not a "
                              f"square grid; cannot resample it to {new_grid}.")
    if (old_side, old_side) == tuple(new_grid):
        return pos_embed
    channels = patches.shape[-1]
    grid = patches.reshape(1, old_side, old_side, channels).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False)
    patches = grid.permute(0, 2, 3, 1).reshape(1, -1, channels).to(pos_embed.dtype)
    return torch.cat([prefix, patches], dim=1)


def image_size_of(state: Mapping[str, torch.Tensor], prefix: str = "visual_encoder.",
                  num_prefix_tokens: int = 1) -> Optional[int]:
    """Input resolution a ViT state dict was trained at: sqrt(patch tokens) x patch size."""
    pos_embed = state.get(prefix + "pos_embed")
    patch = state.get(prefix + "patch_embed.proj.weight")
    if pos_embed is None or patch is None or pos_embed.dim() != 3:
        return None
    side = int(round((pos_embed.shape[1] - num_prefix_tokens) ** 0.5))
    return side * int(patch.shape[-1])


def resample_vit_pos_embeds(model: nn.Module, state: Dict[str, torch.Tensor],
                             own: Mapping[str, torch.Tensor]) -> List[str]:
    """Resample, in ``state``, every ``<vit>.pos_embed`` whose token count differs."""
    resampled = []
    for key, value in list(state.items()):
        if not key.endswith("pos_embed") or key not in own or own[key].shape == value.shape:
            continue
        owner_name = key[: -len("pos_embed")].rstrip(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        grid = getattr(getattr(owner, "patch_embed", None), "grid_size", None)
        if grid is None or value.dim() != 3 or value.shape[-1] != own[key].shape[-1]:
            continue  # not a ViT position embedding we know how to resample: shape error later
        num_prefix = int(getattr(owner, "num_prefix_tokens", 1))
        old = value.shape[1] - num_prefix
        state[key] = resample_pos_embed(value, tuple(grid), num_prefix)
        resampled.append(key)
        logger.info("resampled %s from a %dx%d to a %dx%d grid", key, int(old ** 0.5),
                    int(old ** 0.5), *grid)
    return resampled


def keep_model_queues(state: Dict[str, torch.Tensor], own: Mapping[str, torch.Tensor],
                       tolerated: Dict[str, str]) -> None:
    """Queues of another size than the model's are dropped from ``state`` (the model keeps its
    fresh random queues and pointer 0): features of another queue length cannot be reused."""
    resized = [k for k in ("image_queue", "text_queue", "idx_queue")
               if k in state and k in own and state[k].shape != own[k].shape]
    if not resized:
        return
    for key in QUEUE_KEYS:
        if key in state and key in own:
            del state[key]
            tolerated[key] = ("the file's queue size differs from the model's queue_size: the "
                              "model keeps its freshly initialised queue (pointer 0)")
    logger.info("the checkpoint's ITC queues have another size than the model's queue_size: "
                "keeping the model's fresh queues (%s)", ", ".join(resized))


def momentum_pairs(model: nn.Module) -> List[Tuple[str, str]]:
    """``(online, momentum)`` child names: every child ``<name>_m`` next to a child ``<name>``."""
    children = dict(model.named_children())
    return [(name[:-2], name) for name in children if name.endswith("_m") and name[:-2] in children]


@torch.no_grad()
def copy_online_to_momentum(model: nn.Module, names: Optional[Iterable[str]] = None) -> List[str]:
    """Copy every online child ``<name>`` into its momentum copy ``<name>_m`` (parameters and
    buffers); ``names`` limits it to those momentum children. Returns the children reset."""
    reset = []
    for online_name, momentum_name in momentum_pairs(model):
        if names is not None and momentum_name not in names:
            continue
        online_state = getattr(model, online_name).state_dict()
        for key, value in getattr(model, momentum_name).state_dict(keep_vars=True).items():
            value.copy_(online_state[key])
        reset.append(momentum_name)
    return reset


def absent_momentum_children(model: nn.Module, state: Mapping[str, torch.Tensor]) -> List[str]:
    """Momentum children of which the file holds no key at all (e.g. exported online-only
    weights): they are re-initialised from the loaded online weights."""
    return [momentum for online, momentum in momentum_pairs(model)
            if not any(k.startswith(momentum + ".") for k in state)
            and any(k.startswith(online + ".") for k in state)]


def _tied_groups(model: nn.Module) -> Dict[str, List[str]]:
    """``key -> other keys holding the same tensor`` (tied weights, e.g. the MLM decoder)."""
    by_tensor: Dict[int, List[str]] = defaultdict(list)
    for key, value in model.state_dict(keep_vars=True).items():
        by_tensor[id(value)].append(key)
    return {k: [o for o in keys if o != k] for keys in by_tensor.values() if len(keys) > 1
            for k in keys}


def _tolerated_reason(side: str, key: str, fmt: str) -> Optional[str]:
    for rule_side, pattern, formats, reason in TOLERATED:
        if rule_side == side and (formats is None or fmt in formats) and re.search(pattern, key):
            return reason
    return None


def group_keys_by_prefix(keys: Iterable[str], depth: int = 2) -> str:
    """``"a.b.{c,d}"``-style summary of state-dict keys, readable with hundreds of keys."""
    groups: Dict[str, List[str]] = defaultdict(list)
    for key in keys:
        parts = key.split(".")
        prefix = ".".join(parts[:depth]) if len(parts) > depth else ""
        groups[prefix].append(".".join(parts[depth:]) if prefix else key)
    lines = []
    for prefix, rests in sorted(groups.items()):
        if prefix:
            shown = ", ".join(sorted(rests)[:6]) + (", ..." if len(rests) > 6 else "")
            lines.append(f"  {prefix}.{{{shown}}} ({len(rests)} keys)")
        else:
            lines.extend(f"  {rest}" for rest in sorted(rests))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- loading
def load_state_dict_checked(module: nn.Module, state: Mapping[str, torch.Tensor], *, fmt: str,
                            strict: bool, source: str,
                            extra_tolerated: Optional[Mapping[str, str]] = None,
                            result: Optional[LoadResult] = None) -> LoadResult:
    """Load an already-mapped ``state`` into ``module``, classifying every key difference.

    Args:
        extra_tolerated: ``key -> reason`` for differences the caller explains itself (e.g.
            fresh cross-attention when initialising from BERT).
        result: a result to complete (resampled keys, tolerated queues ...).

    Raises:
        CheckpointError: tensors of another shape than the model's (always), or unexplained
            missing / unexpected keys with ``strict``.
    """
    result = result or LoadResult(format=fmt)
    extra_tolerated = dict(extra_tolerated or {})
    own = module.state_dict()
    wrong_shape = [f"  {k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                   for k, v in state.items() if k in own and own[k].shape != v.shape]
    if wrong_shape:
        raise CheckpointError(f"{source}: tensors with another shape than the model's:\n"
                              + "\n".join(wrong_shape) + "\nBuild the model with the sizes of "
                              "this checkpoint (model_config overrides), or convert it.")
    tied = _tied_groups(module)
    for key in sorted(set(own) - set(state)):
        partner = next((p for p in tied.get(key, []) if p in state), None)
        reason = (f"tied to {partner}" if partner else extra_tolerated.get(key)
                  or _tolerated_reason("missing", key, fmt))
        if key in result.tolerated:
            continue
        if reason:
            result.tolerated[key] = reason
        else:
            result.missing.append(key)
    usable = {}
    for key, value in state.items():
        if key in own:
            usable[key] = value
            continue
        reason = extra_tolerated.get(key) or _tolerated_reason("unexpected", key, fmt)
        if reason:
            result.tolerated[key] = reason
        else:
            result.unexpected.append(key)
    if strict and (result.missing or result.unexpected):
        raise CheckpointError(
            f"{source} does not match the model ({type(module).__name__}).\nmissing in the "
            f"checkpoint:\n{group_keys_by_prefix(result.missing) or '  (none)'}\nnot in the "
            f"model:\n{group_keys_by_prefix(result.unexpected) or '  (none)'}\nCheck that the "
            f"model config matches the checkpoint, or load with strict=False to keep the "
            f"matching weights only.")
    module.load_state_dict(usable, strict=False)
    _log_result(result, source)
    return result


def _log_result(result: LoadResult, source: str) -> None:
    if result.missing:
        logger.warning("%s: %d model keys missing in the checkpoint (left as initialised):\n%s",
                       source, len(result.missing), group_keys_by_prefix(result.missing))
    if result.unexpected:
        logger.warning("%s: %d checkpoint keys unused by the model:\n%s", source,
                       len(result.unexpected), group_keys_by_prefix(result.unexpected))
    if result.tolerated:
        reasons: Dict[str, List[str]] = defaultdict(list)
        for key, reason in result.tolerated.items():
            reasons[reason].append(key)
        logger.info("%s: expected differences:\n%s", source, "\n".join(
            f"  {reason}: {len(keys)} key(s), e.g. {sorted(keys)[0]}"
            for reason, keys in sorted(reasons.items())))
