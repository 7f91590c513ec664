"""Optimizers, built from ``config.optimizer`` (``type`` + ``params``).

The weight-decay grouping follows the official ALBEF code (timm's ``add_weight_decay``
of 2021): every trainable parameter is decayed EXCEPT exactly-1-D tensors (LayerNorm
weights, biases) and names ending in ``.bias``. So the 0-D ``temp`` and the 3-D
``pos_embed`` / ``cls_token`` ARE decayed (the official Pretrain.py): the official top-level model
exposes no ``no_weight_decay`` list. A model may still name extra exclusions through
``no_weight_decay_keys()`` (exact parameter names); ALBEF returns none.

A registered optimizer factory may carry a ``check_params(params)`` attribute: the config
loader calls it at start-up so a wrong key or value fails before anything is built.
"""
from __future__ import annotations

import difflib
import logging
from typing import Any, Dict, Iterable, List, Mapping, Tuple

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from albef_plugin.config.loader import ConfigError, UnknownKeyError
from albef_plugin.registry import registry

logger = logging.getLogger(__name__)

__all__ = ["weight_decay_param_groups", "build_optimizer", "build_adam_w"]


def _is_decayed(name: str, param: torch.Tensor, no_decay_names: Iterable[str]) -> bool:
    """Official ALBEF rule: no decay for 1-D tensors and ``.bias``; 0-D tensors are decayed."""
    return not (param.ndim == 1 or name.endswith(".bias") or name in no_decay_names)


def weight_decay_param_groups(model: nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    """Split the trainable parameters of ``model`` into a decayed and a non-decayed group.

    Frozen parameters (``requires_grad=False``, e.g. the momentum encoders) are left out:
    the optimizer never touches them.

    Returns:
        ``[{"params": [...], "weight_decay": weight_decay, "names": [...]},
        {"params": [...], "weight_decay": 0.0, "names": [...]}]``; the ``names`` entry is
        kept for logging and tests (torch optimizers keep unknown group keys).
    """
    no_decay_names = set(getattr(model, "no_weight_decay_keys", lambda: ())())
    decay: Tuple[List[nn.Parameter], List[str]] = ([], [])
    no_decay: Tuple[List[nn.Parameter], List[str]] = ([], [])
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group = decay if _is_decayed(name, param, no_decay_names) else no_decay
        group[0].append(param)
        group[1].append(name)
    logger.info("weight decay %g on %d tensors, none on %d tensors (1-D and .bias)",
                weight_decay, len(decay[0]), len(no_decay[0]))
    return [
        {"params": decay[0], "weight_decay": weight_decay, "names": decay[1]},
        {"params": no_decay[0], "weight_decay": 0.0, "names": no_decay[1]},
    ]


_ADAM_W_KEYS = ("lr", "weight_decay", "betas", "eps")


def _number(params: Mapping[str, Any], key: str, *, minimum: float, strict: bool = False) -> float:
    value = params[key]
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"optimizer.params.{key}={value!r}: expected a number.") from None
    if number < minimum or (strict and number == minimum) or number != number:
        raise ConfigError(f"optimizer.params.{key}={value!r}: must be "
                          f"{'>' if strict else '>='} {minimum:g}.")
    return number


def check_adam_w_params(params: Mapping[str, Any]) -> None:
    """Keys and value types of ``optimizer.params`` for adam_w (a ConfigError names the key)."""
    unknown = sorted(set(params) - set(_ADAM_W_KEYS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], _ADAM_W_KEYS, n=1)
        hint = f" Did you mean optimizer.params.{close[0]}?" if close else ""
        raise UnknownKeyError(f"optimizer.params: unknown key(s) {', '.join(unknown)} for adam_w; "
                          f"allowed keys are {', '.join(_ADAM_W_KEYS)}.{hint}")
    if "lr" not in params:
        raise ConfigError("optimizer.params.lr is required for adam_w (the official pretraining "
                          "uses 1e-4).")
    _number(params, "lr", minimum=0.0, strict=True)
    for key, strict in (("weight_decay", False), ("eps", True)):
        if key in params:
            _number(params, key, minimum=0.0, strict=strict)
    if "betas" in params:
        betas = params["betas"]
        ok = isinstance(betas, (list, tuple)) and len(betas) == 2
        try:
            ok = ok and all(0.0 <= float(b) < 1.0 and not isinstance(b, bool) for b in betas)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"optimizer.params.betas={betas!r}: expected two numbers in [0, 1), "
                              f"e.g. [0.9, 0.999].")


@registry.register_optimizer("adam_w", aliases=("adamw",))
def build_adam_w(model: nn.Module, params: Mapping[str, Any]) -> torch.optim.Optimizer:
    """AdamW with the official ALBEF weight-decay grouping.

    Args:
        model: the unwrapped model, already on its device (fused kernels need CUDA params).
        params: ``optimizer.params``: ``lr`` (required), ``weight_decay`` (default 0.02),
            ``betas`` (default (0.9, 0.999)), ``eps`` (default 1e-8).
    """
    check_adam_w_params(params)
    on_cuda = any(p.is_cuda for p in model.parameters())
    groups = weight_decay_param_groups(model, float(params.get("weight_decay", 0.02)))
    return torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=float(params["lr"]),
        betas=tuple(float(b) for b in params.get("betas", (0.9, 0.999))),
        eps=float(params.get("eps", 1e-8)),
        # fused is the fastest on CUDA; foreach batches the small CPU kernels
        fused=True if on_cuda else None,
        foreach=None if on_cuda else True,
    )


# checked when the config is built (config/loader.py), before anything is constructed
build_adam_w.check_params = check_adam_w_params  # type: ignore[attr-defined]


def build_optimizer(model: nn.Module, optimizer_config: Any) -> torch.optim.Optimizer:
    """Build ``optimizer_config.type`` from the optimizer registry with ``optimizer_config.params``."""
    factory = registry.get_optimizer_class(optimizer_config.type)
    params = optimizer_config.params or {}
    if isinstance(params, DictConfig):
        params = OmegaConf.to_container(params, resolve=True)
    return factory(model, params)
