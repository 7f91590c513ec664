"""Training behaviour of ``albef_ve``, ``albef_nlvr`` and ``albef_nlvr_ta``: losses as the
official formulas, momentum teacher, alpha schedule, TA negative assignment."""
import re

import pytest
import torch
import torch.nn.functional as F

from albef_plugin.models import build_model
from albef_plugin.train_state import TrainState

from tests.checkpoints.official_layout import Sizes
from tests.checkpoints.official_reference import sample_inputs

SIZES = Sizes()
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def tiny(name, **extra):
    overrides = SIZES.model_overrides()
    overrides.pop("queue_size")
    if name != "albef_nlvr_ta":
        overrides.pop("embed_dim")
    overrides["text_encoder"].update(NO_DROPOUT)
    overrides.update(extra)
    torch.manual_seed(0)
    return build_model(name, overrides)


def batch_for(name, batch=4, seed=0):
    image, ids, mask = sample_inputs(SIZES.image_size, SIZES.vocab, batch=batch, seed=seed)
    out = {"input_ids": ids, "attention_mask": mask}
    if name == "albef_nlvr":
        out.update(image0=image, image1=torch.flip(image, dims=[0]), label=torch.tensor([1, 0, 1, 0][:batch]))
    else:
        out["image"] = image
        if name == "albef_ve":
            out["label"] = torch.tensor([2, 1, 0, 2][:batch])
    return out


def trainable_without_grad(model):
    exempt = [re.compile(p) for p in model.params_without_grad]
    return [n for n, p in model.named_parameters()
            if p.requires_grad and p.grad is None and not any(e.search(n) for e in exempt)]


@pytest.mark.parametrize("name", ["albef_ve", "albef_nlvr"])
def test_training_loss_is_the_distilled_cross_entropy_and_the_teacher_moves(name):
    model = tiny(name, momentum=0.5).train()
    with torch.no_grad():  # make the teacher differ from the online model
        for p in model.cls_head_m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    batch = batch_for(name)
    teacher_before = model.cls_head_m[2].weight.clone()
    args = ((batch["image"],) if name == "albef_ve" else (batch["image0"], batch["image1"])) + \
        (batch["input_ids"], batch["attention_mask"])
    out = model(batch, TrainState(alpha=0.4))
    # the EMA ran once, before the teacher's forward: teacher = 0.5 * old + 0.5 * online
    torch.testing.assert_close(model.cls_head_m[2].weight,
                               0.5 * teacher_before + 0.5 * model.cls_head[2].weight)
    with torch.no_grad():
        logits, logits_m = model.classify(*args), model.classify(*args, momentum=True)
    torch.testing.assert_close(out["logits"], logits)
    soft = -(F.log_softmax(logits, 1) * F.softmax(logits_m, 1)).sum(1).mean()
    expected = 0.6 * F.cross_entropy(logits, batch["label"]) + 0.4 * soft
    torch.testing.assert_close(out["losses"]["ce"], expected)
    out["losses"]["ce"].backward()
    assert trainable_without_grad(model) == []
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.split(".")[0].endswith("_m"))


@pytest.mark.parametrize("name", ["albef_ve", "albef_nlvr"])
def test_eval_returns_logits_and_changes_no_momentum_weight(name):
    model = tiny(name).eval()
    before = {k: v.clone() for k, v in model.state_dict().items() if "_m." in k}
    batch = batch_for(name)
    classes = 3 if name == "albef_ve" else 2
    with torch.no_grad():
        out = model(batch)
        unlabelled = model({k: v for k, v in batch.items() if k != "label"})
    assert out["logits"].shape == (4, classes) and unlabelled["logits"].shape == (4, classes)
    torch.testing.assert_close(out["losses"]["ce"], F.cross_entropy(out["logits"], batch["label"]))
    assert unlabelled["losses"] == {}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_alpha_schedules_follow_the_official_configs():
    ve, nlvr = tiny("albef_ve"), tiny("albef_nlvr")
    half = TrainState(epoch=0, iteration_in_epoch=5, iterations_per_epoch=10)
    assert ve.alpha_for(TrainState()) == pytest.approx(0.4)      # VE: warm_up False
    assert ve.alpha_for(half) == pytest.approx(0.4)
    assert nlvr.alpha_for(half) == pytest.approx(0.2)            # NLVR: ramp over epoch 0
    assert nlvr.alpha_for(TrainState(epoch=1)) == pytest.approx(0.4)


def test_without_distillation_there_is_no_momentum_model():
    model = tiny("albef_ve", distill=False).train()
    assert not any(k.split(".")[0].endswith("_m") for k in model.state_dict())
    out = model(batch_for("albef_ve"))
    torch.testing.assert_close(out["losses"]["ce"], F.cross_entropy(out["logits"], torch.tensor([2, 1, 0, 2])))


def test_missing_batch_keys_are_named():
    with pytest.raises(KeyError, match=r"ALBEFNLVR batch is missing \['image0', 'image1'\]"):
        tiny("albef_nlvr")(batch_for("albef_ve"))


def test_ta_assignment_labels_say_where_the_true_image_is():
    model = tiny("albef_nlvr_ta")
    torch.manual_seed(1)
    weights = torch.rand(6, 6).fill_diagonal_(0)
    own = torch.arange(6)
    counts = torch.zeros(3)
    for _ in range(300):
        slot0, slot1, labels = model.sample_assignment(weights)
        assert torch.equal(slot0[labels == 0], own[labels == 0])
        assert torch.equal(slot1[labels == 1], own[labels == 1])
        assert (slot1[labels == 0] != own[labels == 0]).all() and (slot0[labels == 1] != own[labels == 1]).all()
        neither = labels == 2
        assert (slot0[neither] != own[neither]).all() and (slot1[neither] != own[neither]).all()
        assert (slot0[neither] != slot1[neither]).all()  # two different negatives
        counts += torch.bincount(labels, minlength=3)
    shares = counts / counts.sum()
    torch.testing.assert_close(shares, torch.full((3,), 1 / 3), atol=0.03, rtol=0)


def test_ta_negatives_follow_the_image_similarity():
    model = tiny("albef_nlvr_ta")
    # images 0/1 and 2/3 are near-duplicates: each picks its twin as the hard negative
    embeds = torch.randn(4, 5, SIZES.width)
    embeds[1], embeds[3] = embeds[0] + 0.01, embeds[2] + 0.01
    weights = model.negative_weights(embeds)
    assert torch.equal(torch.diagonal(weights), torch.zeros(4))
    assert weights.argmax(dim=1).tolist() == [1, 0, 3, 2]


def test_ta_training_step_leaves_vision_proj_without_gradient_and_handles_two_images():
    model = tiny("albef_nlvr_ta").train()
    out = model(batch_for("albef_nlvr_ta"))
    assert set(out["losses"]) == {"ta"} and out["logits"].shape == (4, 3)
    out["losses"]["ta"].backward()
    assert model.vision_proj.weight.grad is None
    assert trainable_without_grad(model) == []
    assert model.params_without_grad == (r"^vision_proj\.",)
    small = model(batch_for("albef_nlvr_ta", batch=2))  # one other image: "neither" repeats it
    assert torch.isfinite(small["losses"]["ta"])
    with pytest.raises(ValueError, match="at least 2 images"):
        model(batch_for("albef_nlvr_ta", batch=1))
