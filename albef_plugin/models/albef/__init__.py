"""The ALBEF model family (importing registers the task models)."""
from albef_plugin.models.albef.base import ALBEFBase
from albef_plugin.models.albef.nlvr import ALBEFNLVR, ALBEFNLVRTextAssignment
from albef_plugin.models.albef.pretrain import ALBEFPretrain
from albef_plugin.models.albef.retrieval import ALBEFRetrieval
from albef_plugin.models.albef.grounding import ALBEFGrounding
from albef_plugin.models.albef.ve import ALBEFVisualEntailment
from albef_plugin.models.albef.vqa import ALBEFVQA

__all__ = ["ALBEFBase", "ALBEFGrounding", "ALBEFPretrain", "ALBEFRetrieval", "ALBEFVisualEntailment",
           "ALBEFNLVR", "ALBEFNLVRTextAssignment", "ALBEFVQA"]
