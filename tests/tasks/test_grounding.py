"""albef_grounding: attention recording, Grad-CAM, box scoring, the grounding metric, the
official RefCOCO+ files (REFER pickle read safely), bad input, and the official layout."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from albef_plugin.datasets.annotations import AnnotationError
from albef_plugin.datasets.grounding import GroundingEvalDataset, ReferIndex, load_plain_pickle
from albef_plugin.inference.gradcam import cross_attention_of
from albef_plugin.metrics.base import EvalContext
from albef_plugin.metrics.grounding import (GroundingMetric, box_iou_inclusive, score_boxes,
                                            upsample_heatmap)
from albef_plugin.models import build_model, load_checkpoint
from albef_plugin.models.albef.grounding import ALBEFGrounding
from albef_plugin.models.bert import BertConfig, BertLayer, attention_mask_for_sdpa
from albef_plugin.processors import ImageEvalProcessor

from checkpoints.official_layout import Sizes, official_pretrain_state, to_finetuned_layout


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("albef_grounding", ALBEFGrounding.tiny_overrides()).eval()


# ------------------------------------------------------------------ attention paths
def test_explicit_attention_equals_sdpa_and_is_off_by_default():
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64,
                        encoder_width=24, attention_probs_dropout_prob=0.0)
    layer = BertLayer(config, has_cross_attention=True).eval()
    hidden, image = torch.randn(3, 7, 32), torch.randn(3, 5, 24)
    mask = attention_mask_for_sdpa(torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5]))
    attentions = (layer.attention.self, layer.crossattention.self)
    assert not any(a.record_attention for a in attentions)
    sdpa = layer(hidden, mask, image)
    assert all(a.attention_map is None for a in attentions)  # nothing kept on the SDPA path
    for attention in attentions:
        attention.record_attention = True
    explicit = layer(hidden, mask, image)
    torch.testing.assert_close(explicit, sdpa, atol=1e-5, rtol=1e-5)
    self_map, cross_map = (a.attention_map for a in attentions)
    assert self_map.shape == (3, 4, 7, 7) and cross_map.shape == (3, 4, 7, 5)
    assert torch.all(self_map[1, :, :, 4:] == 0)  # padded keys get no attention
    torch.testing.assert_close(cross_map.sum(-1), torch.ones(3, 4, 7))
    # the causal path (VQA decoder) too
    attention = layer.attention.self
    causal_sdpa = attention.__class__.forward(attention, hidden, hidden, None, True)
    attention.record_attention = False
    torch.testing.assert_close(causal_sdpa, attention(hidden, hidden, None, True), atol=1e-5, rtol=1e-5)


def test_vit_recording_equals_fused_attention_and_restores_it(model):
    vit = model.visual_encoder
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fused = vit(image)
        with vit.record_attention(1) as maps:
            explicit = vit(image)
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=1e-5)
    assert len(maps) == 1 and maps[0].shape == (2, 2, 17, 17)
    assert all(block.attn.fused_attn for block in vit.blocks)
    with pytest.raises(ValueError, match="ViT block 5 does not exist"):
        with vit.record_attention(5):
            pass


# ------------------------------------------------------------------------ Grad-CAM
def test_itm_gradcam_follows_the_official_formula(model):
    batch = model.dummy_batch()
    image, ids, mask = batch["image"], batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():  # as in evaluation: the Grad-CAM pass enables grad itself
        cam = model.gradcam(image, ids, mask)
    assert cam.tokens.shape == (4, 8, 4, 4) and cam.sentence.shape == (4, 4, 4)
    assert all(p.grad is None for p in model.parameters())
    assert not cross_attention_of(model, 3).record_attention  # back on SDPA
    # reference: the same map and gradient taken by hand
    attention = cross_attention_of(model, 3)
    attention.record_attention = True
    image_embeds, _ = model.encode_image(image)
    text_embeds, _ = model.encode_text(ids, mask)
    score = model.itm_logits(text_embeds, mask, image_embeds)[:, 1]
    maps = attention.attention_map
    grad = torch.autograd.grad(score.sum(), maps)[0]
    attention.record_attention = False
    m = mask.view(4, 1, 8, 1, 1).float()
    expected = (maps[..., 1:].reshape(4, 2, 8, 4, 4) * m
                * (grad[..., 1:].clamp(min=0).reshape(4, 2, 8, 4, 4) * m)).mean(1)
    torch.testing.assert_close(cam.tokens, expected.detach())
    torch.testing.assert_close(cam.sentence, expected.mean(1).detach())  # padding counted as zeros
    assert torch.all(cam.tokens[mask == 0] == 0) and torch.all(cam.tokens >= 0)
    torch.testing.assert_close(cam.score, score.detach())


def test_itc_gradcam_uses_the_cls_query_row_of_the_vit_block(model):
    batch = model.dummy_batch()
    cam = model.gradcam(batch["image"], batch["input_ids"], batch["attention_mask"], mode="itc")
    assert cam.tokens is None and cam.sentence.shape == (4, 4, 4) and torch.all(cam.sentence >= 0)
    assert cam.sentence.sum() > 0
    with torch.no_grad():
        _, image_feat = model.encode_image(batch["image"])
        _, text_feat = model.encode_text(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(cam.score, (image_feat * text_feat).sum(-1) / model.temp.detach())


def test_gradcam_layer_defaults_to_the_third_fusion_layer_and_is_checked():
    overrides = ALBEFGrounding.tiny_overrides()
    overrides["text_encoder"].update(num_hidden_layers=6, fusion_layer=2)
    overrides["gradcam_layer"] = None
    assert build_model("albef_grounding", overrides).gradcam_layer == 4
    overrides["text_encoder"].update(num_hidden_layers=4)
    with pytest.raises(ValueError, match="gradcam_layer=4 .*fusion_layer \\+ 2"):
        build_model("albef_grounding", overrides)


# --------------------------------------------------------------------- box scoring
def test_iou_uses_inclusive_pixels_as_the_official_code():
    assert box_iou_inclusive([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    # [0..9] and [5..14]: 5 shared columns (5..9), all rows: 50 / (100 + 100 - 50)
    assert box_iou_inclusive([0, 0, 10, 10], [5, 0, 10, 10]) == pytest.approx(50 / 150)
    # touching on one pixel column counts as no overlap (strict '<', as computeIoU)
    assert box_iou_inclusive([0, 0, 10, 10], [9, 0, 10, 10]) == 0.0
    assert box_iou_inclusive([0, 0, 10, 10], [20, 20, 5, 5]) == 0.0


def test_box_score_is_the_sum_over_the_square_root_of_the_area():
    heatmap = torch.zeros(2, 2)
    heatmap[0, 1] = 1.0  # top-right patch
    full = upsample_heatmap(heatmap, 40, 60)
    assert full.shape == (40, 60) and full[5, 50] > full[35, 10]
    boxes = [[0, 0, 30, 20], [30, 0, 30, 20], [0, 0, 60, 40]]
    scores = score_boxes(full, boxes)
    torch.testing.assert_close(scores[1], full[0:20, 30:60].sum() / 600 ** 0.5)
    assert int(scores.argmax()) == 1


# ------------------------------------------------------------ official files, metric
def _write_refcoco(root: Path, *, dets=None, bad_gt=False):
    """A tiny RefCOCO+ in the official files: 3 images, refs in val / testA / testB."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations, refs, rows = [], [], [], {"val": [], "test": []}
    sizes = [(40, 60), (48, 48), (30, 50)]
    for image_id, (h, w) in enumerate(sizes):
        Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(root / "images" / f"{image_id}.jpg")
        images.append({"id": image_id, "height": h, "width": w, "file_name": f"{image_id}.jpg"})
        for k, box in enumerate([[0, 0, w // 2, h], [w // 2, 0, w - w // 2, h]]):
            ann_id = 10 * image_id + k
            annotations.append({"id": ann_id, "image_id": image_id, "bbox": box})
            split = ("val", "testA", "testB")[image_id]
            refs.append({"ref_id": ann_id, "ann_id": ann_id, "image_id": image_id, "split": split,
                         "sentences": [{"sent": "left half"}], "category_id": 1})
            rows["val" if split == "val" else "test"].append(
                {"image": f"{image_id}.jpg", "text": f"the thing {k}", "ref_id": ann_id})
    if bad_gt:
        annotations[0]["bbox"] = [50, 0, 30, 40]  # past the right edge of a 60 px wide image
    boxes = {str(a["image_id"]): [] for a in annotations}
    for a in annotations:
        boxes[str(a["image_id"])].append(list(a["bbox"]) + [0.9])  # dets carry a score
    with open(root / "refs(unc).p", "wb") as handle:
        pickle.dump(refs, handle, protocol=2)
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    (root / "dets.json").write_text(json.dumps(dets if dets is not None else boxes))
    (root / "cocos.json").write_text(json.dumps(boxes))
    for split, split_rows in rows.items():
        (root / f"refcoco+_{split}.json").write_text(json.dumps(split_rows))
    return root


def _refer(root: Path) -> ReferIndex:
    return ReferIndex(root / "refs(unc).p", root / "instances.json", root / "dets.json", root / "cocos.json")


def test_refer_pickle_is_read_without_running_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.p").write_bytes(pickle.dumps([{"ref_id": 1, "x": Evil()}]))
    with pytest.raises(AnnotationError, match=r"evil.p: not a pickle of plain data .*builtins.print"):
        load_plain_pickle(tmp_path / "evil.p")
    # python 2 byte strings decode to text
    assert load_plain_pickle(_write_refcoco(tmp_path / "ok") / "refs(unc).p")[0]["split"] == "val"


def test_test_file_splits_into_testA_and_testB_and_the_metric_scores_boxes(tmp_path, model):
    root = _write_refcoco(tmp_path)
    refer = _refer(root)
    transform = ImageEvalProcessor(image_size=32)
    test_a = GroundingEvalDataset([root / "refcoco+_test.json"], str(root / "images"), transform, refer, "testA")
    test_b = GroundingEvalDataset([root / "refcoco+_test.json"], str(root / "images"), transform, refer, "testB")
    assert [r.ref_id for r in test_a.refs] == [10, 11] and [r.ref_id for r in test_b.refs] == [20, 21]
    assert test_a.refs[0].dets == [[0.0, 0.0, 24.0, 48.0], [24.0, 0.0, 24.0, 48.0]]  # score dropped

    class LeftHalf(torch.nn.Module):  # a "model" whose heat-map is always the left half
        def gradcam(self, image, input_ids, attention_mask, mode=None):
            sentence = torch.zeros(image.shape[0], 4, 4)
            sentence[:, :, :2] = 1.0
            return type("Cam", (), {"sentence": sentence})()

    from albef_plugin.datasets.grounding import GroundingEvalCollate

    def tiny_vocab(texts):  # the tiny model's 100-word vocabulary: [CLS] w w
        return {"input_ids": torch.tensor([[1, 5, 6 + len(t)] for t in texts]),
                "attention_mask": torch.ones(len(texts), 3, dtype=torch.long)}

    context = EvalContext(collate_fn=GroundingEvalCollate(tiny_vocab), batch_size=2, num_workers=0,
        output_dir=str(tmp_path / "out"), split="testA", dataset_name="refcoco")
    metric = GroundingMetric({"save_predictions": True})
    result = metric.evaluate(LeftHalf(), test_a, context)
    # ref 10 is the left box (found), ref 11 the right one (missed)
    assert result == {"accuracy": 50.0, "num_refs": 2.0, "accuracy_multi_box": 50.0,
                      "num_multi_box": 2.0, "accuracy_cocos": 50.0}
    rows = json.loads((tmp_path / "out" / "testA_refcoco_predictions.json").read_text())
    assert [r["dets_correct"] for r in rows] == [True, False]
    # the real model runs through the same path
    real = GroundingMetric().evaluate(model, test_a, EvalContext(
        collate_fn=GroundingEvalCollate(tiny_vocab), batch_size=2, num_workers=0))
    assert real["num_refs"] == 2.0 and 0.0 <= real["accuracy"] <= 100.0


def test_bad_grounding_input_names_the_item(tmp_path):
    root = _write_refcoco(tmp_path / "a", dets={"0": [[0, 0, 5, 5]], "1": [], "2": [[0, 0, 5, 5]]})
    with pytest.raises(AnnotationError, match=r"dets.json: image 1 \(ref_id 10, 1.jpg\) has no candidate boxes"):
        GroundingEvalDataset([root / "refcoco+_test.json"], str(root), lambda x: x, _refer(root), "testA")
    root = _write_refcoco(tmp_path / "b", bad_gt=True)
    with pytest.raises(AnnotationError, match=r"annotation 0 \(ref_id 0\): box .* outside its 60x40 image"):
        GroundingEvalDataset([root / "refcoco+_val.json"], str(root), lambda x: x, _refer(root), "val")
    root = _write_refcoco(tmp_path / "c")
    (root / "images" / "0.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(OSError, match=r"1 of 1 val images of .*refcoco\+_val.json are unreadable: .*0.jpg"):
        GroundingEvalDataset([root / "refcoco+_val.json"], str(root / "images"), lambda x: x, _refer(root), "val")


# --------------------------------------------------------------- official checkpoint
def test_official_refcoco_layout_loads_key_for_key(tmp_path):
    sizes = Sizes()
    state = to_finetuned_layout(official_pretrain_state(sizes))
    torch.save(state, tmp_path / "refcoco.pth")  # a bare state dict, as the released refcoco.pth
    model = build_model("albef_grounding", {**sizes.model_overrides(), "gradcam_layer": 3, "itc_block": 1})
    result = load_checkpoint(model, tmp_path / "refcoco.pth", strict=True)
    assert result.missing == [] and result.unexpected == []
    own = model.state_dict()
    for key, value in state.items():
        if not key.endswith("position_ids"):
            assert torch.equal(own[key], value), key
