"""tools/predict.py and albef_plugin.inference.predict at a tiny size, from a config-less
official-layout .pth (sizes inferred from its tensors)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from albef_plugin.inference.predict import Predictor, PredictError, main
from albef_plugin.models import build_model

# heads = width // 64 is what a config-less file implies; the packaged tokenizer needs 30522 words
TINY = {"image_encoder": {"image_size": 32, "patch_size": 8, "width": 64, "depth": 2, "num_heads": 1},
        "text_encoder": {"hidden_size": 64, "num_hidden_layers": 4, "fusion_layer": 2,
                         "num_attention_heads": 1, "intermediate_size": 128,
                         "max_position_embeddings": 40},
        "embed_dim": 16, "queue_size": 16}


def _official_pth(path, seed):
    torch.manual_seed(seed)
    torch.save(build_model("albef_retrieval", TINY).state_dict(), path)  # bare state dict, no config
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(0)
    (root / "photos" / "sub").mkdir(parents=True)
    for name in ("a.jpg", "b.png", "sub/c.jpg"):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(root / "photos" / name)
    (root / "photos" / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    return {"root": root, "ckpt": _official_pth(root / "refcoco.pth", 0),
            "other": _official_pth(root / "other.pth", 1)}


@pytest.fixture(scope="module")
def predictor(files):
    return Predictor(files["ckpt"])


def test_sizes_come_from_a_config_less_checkpoint(predictor):
    model = predictor.model
    assert predictor.model_name == "albef_retrieval" and not model.training
    assert model.config.image_encoder.image_size == 32 and model.config.text_encoder.fusion_layer == 2
    assert next(model.parameters()).device.type == "cpu"


def test_itm_gives_match_probability_and_itc_similarity_for_every_pair(predictor, files):
    images = [files["root"] / "photos" / "a.jpg", files["root"] / "photos" / "b.png"]
    rows = predictor.itm(images, ["a red square", "two blue circles"])
    assert len(rows) == 4 and {r["text"] for r in rows} == {"a red square", "two blue circles"}
    assert all(0 <= r["match_probability"] <= 1 and -1 <= r["itc_similarity"] <= 1 for r in rows)
    with torch.no_grad():  # the same numbers as the model's public API
        image = predictor._images(images[1:])
        tokens = predictor.text_processor(["two blue circles"])
        image_embeds, image_feat = predictor.model.encode_image(image)
        text_embeds, text_feat = predictor.model.encode_text(tokens["input_ids"], tokens["attention_mask"])
        prob = predictor.model.itm_logits(text_embeds, tokens["attention_mask"], image_embeds).softmax(-1)[0, 1]
    assert rows[3]["match_probability"] == pytest.approx(float(prob), abs=1e-5)
    assert rows[3]["itc_similarity"] == pytest.approx(float(image_feat[0] @ text_feat[0]), abs=1e-5)


def test_retrieve_indexes_once_and_queries_by_text_and_by_image(predictor, files, tmp_path):
    index = predictor.build_index(files["root"] / "photos", tmp_path / "index")
    meta = json.loads((index / "index.json").read_text())
    assert [p.split("photos/")[1] for p in meta["paths"]] == ["a.jpg", "b.png", "sub/c.jpg"]
    assert meta["checkpoint_sha256"] == predictor.checkpoint_sha256 and (index / "features.safetensors").is_file()
    ranked = predictor.search_text(index, "a red square", top_k=3)
    sims = [r["itc_similarity"] for r in ranked]
    assert len(ranked) == 3 and sims == sorted(sims, reverse=True)
    reranked = predictor.search_text(index, "a red square", top_k=3, rerank=2)
    probs = [r["match_probability"] for r in reranked[:2]]
    assert probs == sorted(probs, reverse=True) and "match_probability" not in reranked[2]
    assert {r["path"] for r in reranked[:2]} == {r["path"] for r in ranked[:2]}
    by_image = predictor.search_image(index, files["root"] / "photos" / "b.png", top_k=2)
    assert by_image[0]["path"].endswith("b.png") and by_image[0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    # an index of another checkpoint is refused
    with pytest.raises(PredictError, match="was built with another checkpoint"):
        Predictor(files["other"]).search_text(index, "a red square")


def test_gradcam_writes_a_png_per_word_and_one_for_the_sentence(predictor, files, tmp_path):
    written = predictor.gradcam(files["root"] / "photos" / "a.jpg", "the red square", tmp_path / "cam")
    names = sorted(p.name for p in written)
    assert names == ["01_the.png", "02_red.png", "03_square.png", "sentence.png"]
    with Image.open(tmp_path / "cam" / "sentence.png") as png:
        assert png.size == (56, 40)  # the original image's size
    assert predictor.gradcam_layer() == 3  # fusion_layer + 2 does not exist at 4 layers: the last
    itc = predictor.gradcam(files["root"] / "photos" / "a.jpg", "the red square", tmp_path / "itc", mode="itc")
    assert [p.name for p in itc] == ["sentence.png"] and predictor.itc_block() == 1


def test_command_line_prints_json_and_names_bad_input(files, tmp_path, capsys):
    ckpt, photos = str(files["ckpt"]), str(files["root"] / "photos")
    assert main(["--checkpoint", ckpt, "--task", "itm", "--image", f"{photos}/a.jpg", "--text", "a dog"]) == 0
    out = capsys.readouterr().out  # log lines come first when an earlier test configured logging
    assert json.loads(out[out.index("[\n {"):])[0]["text"] == "a dog"

    def error(*argv):
        assert main(list(argv)) == 2
        return capsys.readouterr().err

    assert "error: --checkpoint nope.pth: no such file" in error("--checkpoint", "nope.pth", "--task", "itm")
    assert f"{files['root']}/broken.jpg: not a readable image" in error(
        "--checkpoint", ckpt, "--task", "itm", "--image", str(files["root"] / "broken.jpg"), "--text", "x")
    assert "no image files" in error("--checkpoint", ckpt, "--task", "retrieve", "--images",
                                     str(files["root"] / "empty"), "--index", str(tmp_path / "i"))
    assert "--task vqa needs --answer-list" in error("--checkpoint", ckpt, "--task", "vqa", "--image",
                                                     f"{photos}/a.jpg", "--question", "what colour")
    assert "needs --out FOLDER" in error("--checkpoint", ckpt, "--task", "gradcam", "--image",
                                         f"{photos}/a.jpg", "--text", "x")
    if not torch.cuda.is_available():
        assert "--device cuda: CUDA is not available" in error("--checkpoint", ckpt, "--task", "itm",
                                                               "--device", "cuda")
