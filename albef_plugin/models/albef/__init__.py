"""ALBEF models (importing registers them)."""
from albef_plugin.models.albef.pretrain import ALBEFPretrain

__all__ = ["ALBEFPretrain"]
