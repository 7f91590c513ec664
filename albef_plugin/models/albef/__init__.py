"""The ALBEF model family (importing registers the task models)."""
from albef_plugin.models.albef.base import ALBEFBase
from albef_plugin.models.albef.pretrain import ALBEFPretrain
from albef_plugin.models.albef.retrieval import ALBEFRetrieval
from albef_plugin.models.albef.grounding import ALBEFGrounding

__all__ = ["ALBEFBase", "ALBEFGrounding", "ALBEFPretrain", "ALBEFRetrieval"]
