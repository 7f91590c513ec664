"""ALBEF models (importing registers them)."""
from albef_plugin.models.albef.nlvr import ALBEFNLVR, ALBEFNLVRTextAssignment
from albef_plugin.models.albef.pretrain import ALBEFPretrain
from albef_plugin.models.albef.ve import ALBEFVisualEntailment

__all__ = ["ALBEFPretrain", "ALBEFVisualEntailment", "ALBEFNLVR", "ALBEFNLVRTextAssignment"]
