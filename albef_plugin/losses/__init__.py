"""ALBEF losses: pure functions of tensors, plus registered ``nn.Module`` wrappers.

Registered names: ``itc``, ``itm``, ``mlm``.
"""
from albef_plugin.losses.itc import ITCLoss, itc_loss
from albef_plugin.losses.itm import (ITMLoss, itm_labels, itm_loss, positive_mask_from_ids,
                                     sample_hard_negatives)
from albef_plugin.losses.mlm import MLMLoss, mask_tokens, mlm_loss

__all__ = ["ITCLoss", "itc_loss", "ITMLoss", "itm_loss", "itm_labels", "positive_mask_from_ids",
           "sample_hard_negatives", "MLMLoss", "mask_tokens", "mlm_loss"]
