"""ALBEF losses: pure functions of tensors, called by the models' forward."""
from albef_plugin.losses.itc import itc_loss
from albef_plugin.losses.itm import (itm_labels, itm_loss, positive_mask_from_ids,
                                     sample_hard_negatives)
from albef_plugin.losses.mlm import mask_tokens, mlm_loss

__all__ = ["itc_loss", "itm_loss", "itm_labels", "positive_mask_from_ids",
           "sample_hard_negatives", "mask_tokens", "mlm_loss"]
