"""The speed levers of the training step keep its numerics and never wait on the device:
``training.compile`` (encoders compiled in place), no host sync in forward/backward, gradient
checkpointing reachable from the run config."""
import copy
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from albef_plugin.models import build_model
from albef_plugin.models.albef.base import TINY_ALBEF_OVERRIDES
from albef_plugin.train_state import TrainState
from albef_plugin.trainers.build import wrap_model

NO_DROPOUT = {"text_encoder": {**TINY_ALBEF_OVERRIDES["text_encoder"], "hidden_dropout_prob": 0.0,
                               "attention_probs_dropout_prob": 0.0}}


def _tiny(**extra):
    torch.manual_seed(0)
    return build_model("albef_pretrain", {**copy.deepcopy(TINY_ALBEF_OVERRIDES), **NO_DROPOUT,
                                          **extra}).train()


def _losses_over_steps(model, steps=3):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    state = TrainState(alpha=0.4)
    history = []
    for step in range(steps):
        torch.manual_seed(100 + step)  # same masks and hard negatives in both runs
        losses = model(model.dummy_batch(4, seed=step), state)["losses"]
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(torch.stack([v.detach() for v in losses.values()]))
    return torch.stack(history)


def test_compile_switch_compiles_the_encoders_in_place_with_eager_losses():
    eager = _tiny()
    compiled = copy.deepcopy(eager)
    keys = list(compiled.state_dict())
    wrapped = wrap_model(compiled, torch.device("cpu"), find_unused_parameters=False,
                         compile_model=True, compile_kwargs={"backend": "aot_eager"})
    assert wrapped is compiled and list(wrapped.state_dict()) == keys  # no _orig_mod. prefix
    for name in ("visual_encoder", "text_encoder", "visual_encoder_m", "text_encoder_m"):
        assert getattr(compiled, name)._compiled_call_impl is not None, name
    torch.testing.assert_close(_losses_over_steps(compiled), _losses_over_steps(eager),
                               rtol=1e-5, atol=1e-5)


def test_encoders_compile_without_graph_breaks():
    """Config is read into plain attributes at construction: no OmegaConf or Python-side
    reads break the encoder graphs (every text-encoder mode, the ViT)."""
    model = _tiny()
    batch = model.dummy_batch(2)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    image_embeds = model.visual_encoder(batch["image"])
    text_embeds = model.text_encoder(ids, mask, mode="text")
    calls = {
        "visual_encoder": (model.visual_encoder, (batch["image"],), {}),
        "text mode": (model.text_encoder, (ids, mask), {"mode": "text"}),
        "fusion mode": (model.text_encoder, (), {"attention_mask": mask, "encoder_embeds": text_embeds,
                                                 "encoder_hidden_states": image_embeds, "mode": "fusion"}),
        "multimodal mode": (model.text_encoder, (ids, mask),
                            {"encoder_hidden_states": image_embeds, "mode": "multimodal"}),
    }
    for label, (module, args, kwargs) in calls.items():
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(module)(*args, **kwargs)
        assert explanation.graph_break_count == 0, (label, explanation.break_reasons)
        assert explanation.graph_count == 1, label


# aten ops that make the host wait for the device (or that have data-dependent output shapes)
SYNCING_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2",
               "unique_consecutive", "unique_dim", "repeat_interleave")


class NoHostSync(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNCING_OPS:
            raise AssertionError(f"host sync in the training step: aten.{name}")
        return func(*args, **(kwargs or {}))


def _raise(*_args, **_kwargs):
    raise AssertionError("host sync in the training step: Tensor.tolist / Tensor.item")


def test_training_step_runs_no_host_sync(monkeypatch):
    """Forward with the three losses, then backward, under a dispatch mode that fails on every
    op that reads a value back to the host (.item(), bool(tensor), .tolist(), nonzero, boolean
    indexing, unique...). The optimizer step is torch's own; the CUDA test covers it."""
    model = _tiny()
    state = TrainState(alpha=0.4)
    batch = model.dummy_batch(4)
    model(batch, state)  # first call builds lazy state (momentum parameter lists)
    monkeypatch.setattr(torch.Tensor, "tolist", _raise)
    monkeypatch.setattr(torch.Tensor, "item", _raise)
    with NoHostSync():
        losses = model(batch, state)["losses"]
        sum(losses.values()).backward()
    monkeypatch.undo()
    # the guard is live: a sync inside it is caught
    with pytest.raises(AssertionError, match="aten._local_scalar_dense|aten.nonzero"):
        with NoHostSync():
            bool(losses["itc"] > 0)


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs CUDA: torch.cuda.set_sync_debug_mode only checks device syncs "
                           "(the CPU equivalent is test_training_step_runs_no_host_sync)")
def test_cuda_step_runs_under_sync_debug_mode_error():
    device = torch.device("cuda")
    model = _tiny().to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                                  fused=True)
    state = TrainState(alpha=0.4)
    batch = {k: v.to(device) for k, v in model.dummy_batch(4).items()}

    def step():
        losses = model(batch, state)["losses"]
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    step()  # lazy initialisation (cuBLAS handles, optimizer state) may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_gradient_checkpointing_is_reachable_from_the_run_config(monkeypatch):
    """``model_config.<model>.gradient_checkpointing=true`` (for batch 256 on one GPU) turns on
    recomputation in both online encoders, and a training forward goes through it."""
    from albef_plugin.config.loader import build_config
    from albef_plugin.trainers.build import build_model as build_from_config

    config = build_config(["config=projects/albef/configs/demo/pretrain.yaml",
                           "model_config.albef_pretrain.gradient_checkpointing=true",
                           "model_config.albef_pretrain.image_encoder.depth=1"])
    model = build_from_config(config).train()
    assert model.visual_encoder.grad_checkpointing
    assert model.text_encoder.bert.encoder.gradient_checkpointing
    import timm.models.vision_transformer as timm_vit

    import albef_plugin.models.bert as bert_module

    calls = {"bert": 0, "vit": 0}

    def spy(where, real):
        def wrapped(*args, **kwargs):
            calls[where] += 1
            return real(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(bert_module, "checkpoint", spy("bert", bert_module.checkpoint))
    monkeypatch.setattr(timm_vit, "checkpoint_seq", spy("vit", timm_vit.checkpoint_seq))
    losses = model(model.dummy_batch(2), TrainState(alpha=0.4))["losses"]
    sum(losses.values()).backward()
    assert calls["bert"] > 0 and calls["vit"] > 0, calls


def test_training_compile_switch_reaches_the_trainer(tmp_path, monkeypatch):
    """``training.compile=true`` compiles what the trainer runs (here the toy model, which has no
    ``compile_encoders``, so the whole module); the run trains and logs finite losses. The
    backend is swapped for aot_eager: inductor's C++ build takes minutes on a 2-core machine."""
    from tests.trainers.toy_components import make_config, read_records, run_trainer

    calls = []
    real_compile = torch.compile

    def compile_with_aot_eager(model, **kwargs):
        calls.append(type(model).__name__)
        return real_compile(model, **{**kwargs, "backend": "aot_eager"})

    monkeypatch.setattr(torch, "compile", compile_with_aot_eager)
    run_trainer(make_config(tmp_path, "training.compile=true", "training.max_updates=3"))
    assert calls == ["ToyModel"]
    records = read_records(tmp_path, "train")
    assert max(r["update"] for r in records) == 3
    losses = [v for r in records for k, v in r.items() if k.endswith("loss")]
    assert losses and all(math.isfinite(v) for v in losses)
