"""Tiny stand-ins honouring the contracts the retrieval evaluator relies on."""
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn


class TinyRetrievalSet(torch.utils.data.Dataset):
    """A retrieval evaluation dataset: ``num_images`` random images, ``captions_per_image`` each.

    Captions have different lengths, and the text processor pads to the longest caption
    of each call, so text batches come back with different widths.
    """

    def __init__(self, num_images: int = 6, captions_per_image: int = 2, image_size: int = 16,
                 seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(num_images, 3, image_size, image_size, generator=generator)
        self.texts: List[str] = []
        self.img2txt: List[List[int]] = []
        self.txt2img: List[int] = []
        for image in range(num_images):
            self.img2txt.append([])
            for caption in range(captions_per_image):
                words = [f"w{(image * 7 + caption * 3 + n) % 50}" for n in range(2 + (image + caption) % 5)]
                self.img2txt[-1].append(len(self.texts))
                self.txt2img.append(image)
                self.texts.append(" ".join(words))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Dict[str, object]:
        return {"image": self.images[index], "index": index}

    def text_processor(self, texts: List[str]) -> Dict[str, torch.Tensor]:
        """``[CLS] words`` as ids (word ``wN`` -> N + 2), padded with 0 to the longest."""
        rows = [[1] + [int(w[1:]) + 2 for w in text.split()] for text in texts]
        width = max(len(r) for r in rows)
        input_ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        return {"input_ids": input_ids, "attention_mask": (input_ids != 0).long()}


class TinyITMModel(nn.Module):
    """Implements ``encode_image``, ``encode_text`` and ``itm_logits`` with a few small layers.

    ``itm_logits`` depends on the text mask (masked mean), so extra padding must not
    change it; it also counts its calls and pairs to check the batching.
    """

    def __init__(self, width: int = 8, embed_dim: int = 4, patch: int = 8) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, width, patch, stride=patch)
        self.word_embeddings = nn.Embedding(64, width)
        self.vision_proj = nn.Linear(width, embed_dim)
        self.text_proj = nn.Linear(width, embed_dim)
        self.itm_head = nn.Linear(width, 2)
        self.dropout = nn.Dropout(0.5)  # makes eval mode observable
        self.itm_calls: List[int] = []

    def encode_image(self, image: torch.Tensor):
        tokens = self.patch_embed(image).flatten(2).transpose(1, 2)          # (B, N, D)
        embeds = torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1)     # (B, 1+N, D)
        return embeds, F.normalize(self.vision_proj(self.dropout(embeds[:, 0])), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        embeds = self.word_embeddings(input_ids)                                   # (B, L, D)
        return embeds, F.normalize(self.text_proj(self.dropout(embeds[:, 0] + embeds[:, 1])), dim=-1)

    def itm_logits(self, text_embeds: torch.Tensor, attention_mask: torch.Tensor,
                   image_embeds: torch.Tensor) -> torch.Tensor:
        self.itm_calls.append(text_embeds.shape[0])
        mask = attention_mask.unsqueeze(-1).to(text_embeds.dtype)
        text = (text_embeds * mask).sum(1) / mask.sum(1)
        return self.itm_head(text * image_embeds[:, 0])                       # (B, 2)


def full_itm_matrix(model: nn.Module, dataset: TinyRetrievalSet, column: int = 1) -> torch.Tensor:
    """``(Ni, Nt)`` ITM logits of every pair (class 1, match, unless ``column`` says otherwise),
    one pair at a time (the slow truth)."""
    model.eval()
    with torch.no_grad():
        tokens = dataset.text_processor(dataset.texts)
        text_embeds, _ = model.encode_text(tokens["input_ids"], tokens["attention_mask"])
        image_embeds, _ = model.encode_image(dataset.images)
        scores = torch.empty(len(dataset), len(dataset.texts))
        for i in range(len(dataset)):
            for t in range(len(dataset.texts)):
                scores[i, t] = model.itm_logits(text_embeds[t:t + 1], tokens["attention_mask"][t:t + 1],
                                                image_embeds[i:i + 1])[0, column]
    return scores


# A tiny albef_pretrain: 32 px images in 4 patches, 2 BERT layers (1 text + 1 fusion).
TINY_ALBEF_OVERRIDES = [
    "image_encoder.image_size=32", "image_encoder.patch_size=16", "image_encoder.width=32",
    "image_encoder.depth=1", "image_encoder.num_heads=2",
    "text_encoder.vocab_size=64", "text_encoder.hidden_size=32", "text_encoder.num_hidden_layers=2",
    "text_encoder.fusion_layer=1", "text_encoder.num_attention_heads=2",
    "text_encoder.intermediate_size=64", "text_encoder.max_position_embeddings=32",
    "text_encoder.cls_token_id=1", "text_encoder.mask_token_id=2",
    "embed_dim=16", "queue_size=64",
]
