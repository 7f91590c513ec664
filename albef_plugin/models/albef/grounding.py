"""ALBEF weakly-supervised visual grounding (RefCOCO+): the official ``Grounding.py``.

Training is the retrieval objective on referring expressions: ITC (multi-positive by image,
``idx`` = the image) + ITM with hard negatives of other images, momentum distillation and an
``idx_queue``; no box is ever seen. So this model *is* :class:`ALBEFRetrieval` (same modules,
same ``forward``, same checkpoint filters: the official ``refcoco.pth`` has the retrieval
layout, ``text_encoder.*`` without MLM head, plus ``idx_queue``), with what localisation
needs on top:

* ``gradcam_layer``: the text/fusion layer whose cross-attention Grad-CAM reads (official
  ``--block_num 8``: the third fusion layer, ``fusion_layer + 2``; None = that default);
* ``itc_block``: the ViT block of ITC-mode Grad-CAM (official ``--gradcam_mode itc``);
* :meth:`gradcam`: heat-maps on the patch grid (``albef_plugin.inference.gradcam``), which the
  registered ``grounding`` metric turns into a box choice among the candidates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

from albef_plugin.models.albef.retrieval import ALBEFRetrieval
from albef_plugin.registry import registry

__all__ = ["ALBEFGrounding", "GRADCAM_MODES"]

GRADCAM_MODES = ("itm", "itc")


@registry.register_model("albef_grounding")
class ALBEFGrounding(ALBEFRetrieval):
    """ALBEF fine-tuned for weakly-supervised grounding; see the module docstring."""

    @dataclass
    class Config(ALBEFRetrieval.Config):
        gradcam_mode: str = "itm"              # itm: fusion cross-attention; itc: ViT self-attention
        gradcam_layer: Optional[int] = None    # text/fusion layer index; None = fusion_layer + 2
        itc_block: int = 8                     # ViT block of ITC-mode Grad-CAM

    def read_config(self, cfg: Any) -> None:
        super().read_config(cfg)
        text = cfg.text_encoder
        layers, fusion = int(text.num_hidden_layers), int(text.fusion_layer)
        layer = fusion + 2 if cfg.gradcam_layer is None else int(cfg.gradcam_layer)
        if not fusion <= layer < layers:
            raise ValueError(
                f"gradcam_layer={layer}{' (the default fusion_layer + 2)' if cfg.gradcam_layer is None else ''} "
                f"must be a layer with cross-attention: fusion_layer={fusion} .. "
                f"num_hidden_layers-1={layers - 1}; set model_config.<model>.gradcam_layer.")
        depth = int(cfg.image_encoder.depth)
        if not 0 <= int(cfg.itc_block) < depth:
            raise ValueError(f"itc_block={cfg.itc_block} must be a ViT block index in 0..{depth - 1}; "
                             f"set model_config.<model>.itc_block.")
        if cfg.gradcam_mode not in GRADCAM_MODES:
            raise ValueError(f"gradcam_mode={cfg.gradcam_mode!r}: choose one of {', '.join(GRADCAM_MODES)}.")
        self.gradcam_layer = layer
        self.itc_block = int(cfg.itc_block)
        self.gradcam_mode = str(cfg.gradcam_mode)

    @classmethod
    def tiny_overrides(cls) -> Dict[str, Any]:
        overrides = super().tiny_overrides()
        # 4 text layers, fusion from 2: the default fusion_layer + 2 does not exist at this size
        overrides.update(gradcam_layer=3, itc_block=1)
        return overrides

    def gradcam(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                mode: Optional[str] = None) -> Any:
        """Grad-CAM heat-maps (:class:`albef_plugin.inference.gradcam.GradCAM`): per-token maps
        ``[B, L, g, g]`` (ITM mode) and the whole-sentence map ``[B, g, g]``. Runs with grad
        enabled, whatever the caller's mode; leaves no gradient on the parameters."""
        from albef_plugin.inference.gradcam import itc_gradcam, itm_gradcam

        mode = mode or self.gradcam_mode
        if mode == "itm":
            return itm_gradcam(self, image, input_ids, attention_mask, self.gradcam_layer)
        if mode == "itc":
            return itc_gradcam(self, image, input_ids, attention_mask, self.itc_block)
        raise ValueError(f"Grad-CAM mode {mode!r}: choose one of {', '.join(GRADCAM_MODES)}.")
