"""tools/predict.py --task vqa and Predictor.vqa at a tiny size, from a config-less official-layout
vqa.pth (sizes, decoder depth included, inferred from its tensors) and a trainer checkpoint."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from albef_plugin.inference.predict import Predictor, PredictError, main, read_answer_list
from albef_plugin.models import build_model
from albef_plugin.models.albef.vqa import VQAAnswerer

# heads = width // 64 is what a config-less file implies; the packaged tokenizer needs 30522 words.
# 4 text layers with fusion from layer 2: a 2-layer answer decoder.
TINY = {"image_encoder": {"image_size": 32, "patch_size": 8, "width": 64, "depth": 2, "num_heads": 1},
        "text_encoder": {"hidden_size": 64, "num_hidden_layers": 4, "fusion_layer": 2,
                         "num_attention_heads": 1, "intermediate_size": 128,
                         "max_position_embeddings": 40}}
ANSWERS = ["yes", "no", "red", "blue", "two", "three", "a dog", "green square", "left", "zero"]


def _error(capsys, *argv) -> str:
    """The one ``error:`` line of a failing command (exit 2)."""
    assert main(list(argv)) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_vqa")
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.png"):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(root / name)
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "answer_list.json").write_text(json.dumps(ANSWERS))
    torch.manual_seed(0)
    model = build_model("albef_vqa", TINY)
    torch.save(model.state_dict(), root / "vqa.pth")  # the official layout: a bare state dict
    payload = {"format_version": 1, "model": model.state_dict(), "optimizer": {},
               "config": {"model": "albef_vqa",
                          "model_config": {"albef_vqa": OmegaConf.to_container(model.config)}}}
    torch.save(payload, root / "current.ckpt")  # a VQA training run's checkpoint, config inside
    torch.manual_seed(1)
    torch.save(build_model("albef_retrieval", {**TINY, "embed_dim": 16, "queue_size": 16}).state_dict(),
               root / "refcoco.pth")
    torch.save(build_model("albef_ve", TINY).state_dict(), root / "ve.pth")
    shallow = {k: v for k, v in model.state_dict().items() if ".encoder.layer.1." not in k
               or not k.startswith(("text_decoder.", "text_decoder_m."))}
    torch.save(shallow, root / "shallow_decoder.pth")
    return root


@pytest.fixture(scope="module")
def predictor(files):
    return Predictor(files / "vqa.pth", task="vqa")


def test_sizes_and_decoder_depth_come_from_a_config_less_checkpoint(predictor, files):
    model = predictor.model
    assert predictor.model_name == "albef_vqa" and not model.training
    assert model.config.image_encoder.image_size == 32 and model.config.text_encoder.fusion_layer == 2
    assert len(model.text_decoder.bert.encoder.layer) == 2
    assert next(model.parameters()).device.type == "cpu"
    # the trainer checkpoint rebuilds the same model from its stored config: the same answers
    trained = Predictor(files / "current.ckpt", task="vqa")
    question = ["what color is the square?"]
    assert trained.vqa(files / "a.jpg", question, ANSWERS, k=5, top_k=5) == \
        predictor.vqa(files / "a.jpg", question, ANSWERS, k=5, top_k=5)


def test_answers_come_from_the_list_best_first_and_k_is_respected(predictor, files):
    images, questions = [files / "a.jpg", files / "b.png"], ["is there a dog?", "how many shapes?"]
    rows = predictor.vqa(images, questions, files / "answer_list.json", k=4, top_k=10)
    assert [(r["image"], r["question"]) for r in rows] == [(str(i), q) for i in images for q in questions]
    for row in rows:
        scores = [a["score"] for a in row["answers"]]
        assert len(row["answers"]) == 4                      # k candidates, not top_k
        assert {a["answer"] for a in row["answers"]} <= set(ANSWERS)
        assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=1e-5)
    # top_k cuts the printed list; a k over the list size is capped at it
    assert len(predictor.vqa(images[0], questions[0], ANSWERS, k=4, top_k=2)[0]["answers"]) == 2
    everything = predictor.vqa(images[0], questions[0], ANSWERS, k=500, top_k=500)[0]["answers"]
    assert sorted(a["answer"] for a in everything) == sorted(ANSWERS)
    # the model's rank_answer through VQAAnswerer, with the predictor's image processor
    pil = predictor.load_image(images[1])
    expected = VQAAnswerer(predictor.model, ANSWERS, k=4,
                           image_processor=predictor.image_processor).answer(pil, questions[0], top=4)
    # (a batch of one question pads differently: equal up to rounding, near-ties may swap)
    assert {a["answer"]: pytest.approx(a["score"], abs=1e-5) for a in rows[2]["answers"]} == dict(expected)


def test_command_line_and_python_api_agree(predictor, files, tmp_path, capsys):
    out = tmp_path / "answers" / "vqa.json"
    argv = ["--checkpoint", str(files / "vqa.pth"), "--task", "vqa", "--image", str(files / "a.jpg"),
            str(files / "b.png"), "--question", "what color is it?", "is it a dog?",
            "--answer-list", str(files / "answer_list.json"), "--k", "6", "--top-k", "3",
            "--output", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out  # log lines come first when an earlier test configured logging
    written = json.loads(out.read_text())
    assert json.loads(printed[printed.index("[\n {"):]) == written
    api = predictor.vqa([files / "a.jpg", files / "b.png"], ["what color is it?", "is it a dog?"],
                        files / "answer_list.json", k=6, top_k=3)
    assert len(written) == 4 and all(len(r["answers"]) == 3 for r in written)
    for cli_row, api_row in zip(written, api):
        assert (cli_row["image"], cli_row["question"]) == (api_row["image"], api_row["question"])
        assert {a["answer"]: a["score"] for a in cli_row["answers"]} == \
            {a["answer"]: pytest.approx(a["score"], abs=1e-6) for a in api_row["answers"]}


def test_each_bad_answer_list_is_named(files, tmp_path, capsys):
    base = ["--checkpoint", str(files / "vqa.pth"), "--task", "vqa", "--image", str(files / "a.jpg"),
            "--question", "is it red?"]
    assert "--task vqa needs --answer-list answer_list.json" in _error(capsys, *base)
    missing = tmp_path / "nope.json"
    assert f"--answer-list {missing}: no such file" in _error(capsys, *base, "--answer-list", str(missing))
    for name, content, message in (("empty.json", "[]", "the answer list is empty"),
                                   ("dict.json", '{"yes": 1}', "the top level must be a JSON list of candidate answers, got a dict"),
                                   ("numbers.json", '["yes", 3]', "entry 1 is 3; every candidate answer must be"),
                                   ("twice.json", '["yes", "yes"]', "entry 1 'yes' is listed twice"),
                                   ("broken.json", "[\"yes\",", "not valid JSON")):
        path = tmp_path / name
        path.write_text(content)
        line = _error(capsys, *base, "--answer-list", str(path))
        assert line.startswith(f"error: --answer-list {path}: ") and message in line
    # the Python API's in-memory lists get the same checks
    with pytest.raises(PredictError, match="--answer-list answer_list: entry 0 is ''"):
        read_answer_list(["", "no"])
    with pytest.raises(PredictError, match="answer list must be a list of strings, got a dict"):
        read_answer_list({"yes": 1})


def test_bad_images_arguments_and_checkpoints_are_named(predictor, files, capsys):
    answers = ["--answer-list", str(files / "answer_list.json")]

    def vqa(checkpoint, *extra):
        return _error(capsys, "--checkpoint", str(files / checkpoint), "--task", "vqa", *extra)

    ok = ["--image", str(files / "a.jpg"), "--question", "is it red?", *answers]
    assert f"image {files / 'nope.jpg'}: no such file" in vqa(
        "vqa.pth", "--image", str(files / "nope.jpg"), "--question", "is it red?", *answers)
    assert f"image {files / 'broken.jpg'}: not a readable image" in vqa(
        "vqa.pth", "--image", str(files / "broken.jpg"), "--question", "is it red?", *answers)
    assert "--task vqa needs --question" in vqa("vqa.pth", "--image", str(files / "a.jpg"), *answers)
    assert "--task vqa needs --image" in vqa("vqa.pth", "--question", "is it red?", *answers)
    assert "--k 0 must be >= 1" in vqa("vqa.pth", *ok, "--k", "0")
    assert (f"--checkpoint {files / 'refcoco.pth'} is not a VQA checkpoint: it looks like one for "
            f"retrieval or grounding") in vqa("refcoco.pth", *ok)
    assert "is not a VQA checkpoint: it looks like one for SNLI-VE" in vqa("ve.pth", *ok)
    assert (f"{files / 'shallow_decoder.pth'}: the answer decoder (text_decoder.*) has 1 layers but "
            f"the question encoder has 4 layers with fusion from layer 2") in vqa("shallow_decoder.pth", *ok)
    # the other way round: a VQA checkpoint has no ITM head for --task itm
    line = _error(capsys, "--checkpoint", str(files / "current.ckpt"), "--task", "itm",
                  "--image", str(files / "a.jpg"), "--text", "a dog")
    assert "looks like a checkpoint for VQA (albef_vqa)" in line and "Use --task vqa with it." in line
    with pytest.raises(PredictError, match="--question: give at least one non-empty question"):
        predictor.vqa(files / "a.jpg", ["  "], ANSWERS)
    with pytest.raises(PredictError, match="looks like a checkpoint for VQA"):
        predictor.gradcam(files / "a.jpg", "a dog", files / "cam")
