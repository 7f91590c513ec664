"""albef_retrieval: layout, idx-based ITC / ITM, queues, and the retrieval evaluation."""
from __future__ import annotations

from typing import Dict, List

import pytest
import torch

import albef_plugin.models.albef.base as albef_base
from albef_plugin.models import build_model, model_config
from albef_plugin.models.albef.retrieval import ALBEFRetrieval
from albef_plugin.registry import registry
from albef_plugin.train_state import TrainState


@pytest.fixture
def retrieval_model():
    torch.manual_seed(0)
    return build_model("albef_retrieval", ALBEFRetrieval.tiny_overrides())


def test_registered_with_the_official_fine_tuning_defaults():
    assert registry.get_model_class("albef_retrieval") is ALBEFRetrieval
    cfg = model_config("albef_retrieval")
    assert cfg.image_encoder.image_size == 384
    assert (cfg.embed_dim, cfg.queue_size, cfg.momentum, cfg.alpha, cfg.temp) == \
        (256, 65536, 0.995, 0.4, 0.07)
    assert "temp_min" not in cfg and "mlm_probability" not in cfg  # no clamp, no MLM


def test_state_dict_has_the_official_retrieval_keys(retrieval_model):
    keys = set(retrieval_model.state_dict())
    assert {"text_encoder.embeddings.word_embeddings.weight",
            "text_encoder.encoder.layer.2.crossattention.self.key.weight",
            "text_encoder_m.encoder.layer.3.output.dense.weight", "visual_encoder_m.pos_embed",
            "vision_proj_m.weight", "text_proj_m.bias", "itm_head.weight", "temp",
            "image_queue", "text_queue", "idx_queue", "queue_ptr"} <= keys
    assert not [k for k in keys if ".bert." in k or ".cls." in k]
    assert torch.equal(retrieval_model.idx_queue, torch.full((1, 16), -100))


def test_itc_targets_are_multi_positive_over_batch_and_idx_queue(retrieval_model):
    retrieval_model.idx_queue[0, :3] = torch.tensor([5, 1, 5])
    targets = retrieval_model.itc_targets(torch.tensor([5, 5, 2, 1]))
    assert targets.shape == (4, 4 + 16)
    torch.testing.assert_close(targets.sum(1), torch.ones(4))
    # sample 0 (idx 5): batch columns 0, 1 and queue columns 0, 2 -> 1/4 each
    assert torch.nonzero(targets[0]).flatten().tolist() == [0, 1, 4, 6]
    assert targets[0, 0] == pytest.approx(0.25)
    assert torch.nonzero(targets[2]).flatten().tolist() == [2]
    assert torch.nonzero(targets[3]).flatten().tolist() == [3, 5]


def test_itm_negatives_are_never_a_caption_of_the_same_image(retrieval_model, monkeypatch):
    drawn: List = []
    sample = albef_base.sample_hard_negative_sets

    def recording_sample(*args, **kwargs):
        drawn.append(sample(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(albef_base, "sample_hard_negative_sets", recording_sample)
    model = retrieval_model.train()
    batch = model.dummy_batch(batch_size=8)  # image_id 0 0 1 1 2 2 3 3
    for _ in range(8):
        model(batch)
    idx = batch["image_id"]
    for neg_image, neg_text, valid_image, valid_text in drawn:
        assert valid_image.all() and valid_text.all()
        assert not (idx[neg_image] == idx).any() and not (idx[neg_text] == idx).any()


def test_training_enqueues_ids_with_features_and_leaves_temp_unclamped(retrieval_model):
    model = retrieval_model.train()
    model.temp.data.fill_(0.8)
    batch = model.dummy_batch(batch_size=4)
    batch["image_id"] = torch.tensor([3, 3, 8, 9])
    out = model(batch, TrainState(alpha=0.2))
    assert set(out["losses"]) == {"itc", "itm"} and out["alpha"] == 0.2
    assert model.idx_queue[0, :4].tolist() == [3, 3, 8, 9] and int(model.queue_ptr) == 4
    assert float(model.temp.detach()) == pytest.approx(0.8)
    model.eval()
    with torch.no_grad():
        model(batch)
    assert int(model.queue_ptr) == 4  # eval changes no queue


def test_missing_image_id_is_a_clear_error(retrieval_model):
    batch = retrieval_model.dummy_batch()
    del batch["image_id"]
    with pytest.raises(KeyError, match="image_id"):
        retrieval_model(batch)


class _TinyEvalSet(torch.utils.data.Dataset):
    """A retrieval evaluation set: 4 images, 2 captions each (``[CLS] w ...`` ids)."""

    def __init__(self, image_size: int) -> None:
        gen = torch.Generator().manual_seed(1)
        self.images = torch.randn(4, 3, image_size, image_size, generator=gen)
        self.img2txt = [[2 * i, 2 * i + 1] for i in range(4)]
        self.txt2img = [i // 2 for i in range(8)]
        self.texts = [" ".join(str(3 + (5 * t + n) % 90) for n in range(2 + t % 3)) for t in range(8)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Dict:
        return {"image": self.images[index], "index": index}

    def text_processor(self, texts: List[str]) -> Dict[str, torch.Tensor]:
        rows = [[1] + [int(w) for w in text.split()] for text in texts]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def test_retrieval_evaluation_runs_on_albef_retrieval(retrieval_model):
    from albef_plugin.metrics import EvalContext, RetrievalEvaluator

    dataset = _TinyEvalSet(retrieval_model.visual_encoder.image_size)
    queue = retrieval_model.image_queue.clone()
    evaluator = RetrievalEvaluator({"k_test": 8})
    context = EvalContext(device="cpu", num_workers=0, batch_size=2)
    metrics = evaluator.evaluate(retrieval_model.train(), dataset, context)
    assert {"itc_r_mean", "itm_r_mean", "itm_txt_r1", "itm_img_r1"} <= set(metrics)
    assert all(0.0 <= v <= 100.0 for v in metrics.values())
    assert retrieval_model.training and torch.equal(retrieval_model.image_queue, queue)
    # k_test >= number of candidates: the ITM scores are the model's ITM logits of every pair
    scores = evaluator.compute_scores(retrieval_model, dataset, context)
    retrieval_model.eval()
    with torch.no_grad():
        image_embeds, _ = retrieval_model.encode_image(dataset.images)
        text = dataset.text_processor(dataset.texts)
        text_embeds, _ = retrieval_model.encode_text(text["input_ids"], text["attention_mask"])
        for i in range(4):
            logits = retrieval_model.itm_logits(text_embeds, text["attention_mask"],
                                                image_embeds[i:i + 1].expand(8, -1, -1))
            torch.testing.assert_close(scores.itm_i2t[i], logits[:, 1], atol=1e-4, rtol=1e-4)
