"""What must hold across 2 real gloo processes (one spawn shared by every check here).

* ranks agree on a stop signal at the same update, one update after it arrived;
* the ITC queues receive the all-gathered momentum features in rank order;
* with every term per sample (MLM only, dropout 0, masks seeded per global sample index,
  the same number of masked tokens per sample), 2 ranks x batch b give the loss and the
  gradients of 1 rank x batch 2b;
* the distributed ITM re-ranking gives exactly the single-process retrieval metrics.

Per-rank-by-design terms (ITC in-batch negatives, ITM hard negatives, MLM masks from each
rank's RNG, dropout) are listed in docs/distributed.md.
"""
import os
import signal
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch._dynamo  # noqa: F401  (imported before forking: children inherit it)
import torch.multiprocessing as mp

import albef_plugin.models.albef.pretrain as pretrain_module
from albef_plugin.distributed import destroy_distributed, init_distributed
from albef_plugin.losses.mlm import IGNORE_INDEX
from albef_plugin.models import build_model
from albef_plugin.trainers.preemption import STOP_SIGNALS, StopAgreement

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "metrics"))
from retrieval_fakes import TinyITMModel, TinyRetrievalSet  # noqa: E402

pytestmark = pytest.mark.slow

WORLD_SIZE, PER_RANK = 2, 3
VOCAB, PAD, CLS, MASK = 100, 0, 1, 2
MASKED_PER_SAMPLE = 2
PER_SAMPLE_MODEL = {
    "image_encoder": {"image_size": 32, "patch_size": 8, "width": 32, "depth": 1, "num_heads": 2},
    "text_encoder": {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2,
                     "fusion_layer": 1, "num_attention_heads": 2, "intermediate_size": 64,
                     "max_position_embeddings": 32, "pad_token_id": PAD, "cls_token_id": CLS,
                     "mask_token_id": MASK, "hidden_dropout_prob": 0.0,
                     "attention_probs_dropout_prob": 0.0},
    "embed_dim": 16, "queue_size": 12,
    "loss_weights": {"itc": 0.0, "itm": 0.0, "mlm": 1.0},
}


def global_batch():
    """``WORLD_SIZE * PER_RANK`` samples; token 1 of each caption is ``3 + global index``."""
    gen = torch.Generator().manual_seed(7)
    size, length = WORLD_SIZE * PER_RANK, 8
    input_ids = torch.randint(3 + size, VOCAB, (size, length), generator=gen)
    input_ids[:, 0] = CLS
    input_ids[:, 1] = 3 + torch.arange(size)
    lengths = torch.tensor([8, 5, 6, 8, 4, 7])
    attention_mask = (torch.arange(length)[None] < lengths[:, None]).long()
    return {"image": torch.randn(size, 3, 32, 32, generator=gen),
            "input_ids": input_ids.masked_fill(attention_mask == 0, PAD),
            "attention_mask": attention_mask}


def masks_per_global_sample(input_ids, vocab_size, mask_token_id, pad_token_id, cls_token_id,
                            probability, generator=None):
    """Stands in for the model's ``mask_tokens``: each sample's masks come from its own seed
    (its global index, read from token 1), and every sample has the same number of masks,
    so per-rank mean losses average to the global mean."""
    masked, labels = input_ids.clone(), torch.full_like(input_ids, IGNORE_INDEX)
    for row in range(input_ids.shape[0]):
        index = int(input_ids[row, 1]) - 3
        candidates = ((input_ids[row] != pad_token_id) & (input_ids[row] != cls_token_id)).nonzero()[:, 0]
        order = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(1000 + index))
        chosen = candidates[order[:MASKED_PER_SAMPLE]]
        labels[row, chosen] = input_ids[row, chosen]
        masked[row, chosen] = mask_token_id
    return masked, labels


def per_sample_step(model, batch):
    """One training forward/backward; returns the loss, the gradients and the queues' head."""
    losses = model(batch)["losses"]
    loss = sum(losses.values())
    loss.backward()
    inner = getattr(model, "module", model)
    grads = {n: p.grad.detach().clone() for n, p in inner.named_parameters() if p.grad is not None}
    size = WORLD_SIZE * PER_RANK
    return {"loss": loss.detach(), "grads": grads,
            "image_queue": inner.image_queue[:, :size].clone(),
            "text_queue": inner.text_queue[:, :size].clone(),
            "queue_ptr": int(inner.queue_ptr)}


def build_per_sample_model():
    torch.manual_seed(0)
    return build_model("albef_pretrain", PER_SAMPLE_MODEL).train()


def _stop_check(rank):
    STOP_SIGNALS.reset()
    agreement = StopAgreement()
    seen = []
    for update in range(1, 7):
        if rank == 1 and update == 3:  # only rank 1 gets the signal, twice
            STOP_SIGNALS._handle(signal.SIGUSR2)
            STOP_SIGNALS._handle(signal.SIGUSR2)
        seen.append(agreement.after_update())
    agreement.close()
    names = [agreement.signal_name]
    # rank 0 gets SIGTERM (SLURM ends the job), rank 1 USR2: SIGTERM wins on both
    STOP_SIGNALS.reset()
    agreement = StopAgreement()
    STOP_SIGNALS._handle(signal.SIGTERM if rank == 0 else signal.SIGUSR2)
    while not agreement.after_update():
        pass
    agreement.close()
    names.append(agreement.signal_name)
    STOP_SIGNALS.reset()
    return {"seen": seen, "names": names}


def _worker(rank, port, out_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    assert init_distributed(backend="gloo", timeout_minutes=1)
    try:
        results = {"stop": _stop_check(rank)}
        pretrain_module.mask_tokens = masks_per_global_sample
        model = torch.nn.parallel.DistributedDataParallel(build_per_sample_model(),
                                                          find_unused_parameters=True)
        batch = {k: v[rank * PER_RANK:(rank + 1) * PER_RANK] for k, v in global_batch().items()}
        step = per_sample_step(model, batch)
        torch.distributed.all_reduce(step["loss"])
        step["loss"] /= WORLD_SIZE
        results["step"] = step
        results["retrieval"] = evaluate_retrieval()
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        destroy_distributed()


def make_retrieval_evaluator():
    from albef_plugin.registry import registry

    return registry.get_metric_class("retrieval")({"text_batch_size": 5, "k_test": 3})


def evaluate_retrieval():
    from albef_plugin.metrics import EvalContext

    torch.manual_seed(0)
    return make_retrieval_evaluator().evaluate(
        TinyITMModel(), TinyRetrievalSet(6, 2), EvalContext(device="cpu", batch_size=4, num_workers=0))


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("two_ranks")
    mp.start_processes(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD_SIZE, join=True,
                       start_method="fork")
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]


@pytest.fixture(scope="module")
def single_process_step():
    original = pretrain_module.mask_tokens
    pretrain_module.mask_tokens = masks_per_global_sample
    try:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        return per_sample_step(build_per_sample_model(), global_batch())
    finally:
        torch.set_num_threads(threads)
        pretrain_module.mask_tokens = original


def test_ranks_stop_at_the_same_update_one_update_after_the_signal(ranks):
    expected = [False, False, False, True, True, True]
    for result in ranks:
        assert result["stop"]["seen"] == expected
        assert result["stop"]["names"] == ["SIGUSR2", "SIGTERM"]


def test_queues_receive_the_gathered_momentum_features_in_rank_order(ranks, single_process_step):
    for result in ranks:
        step = result["step"]
        assert step["queue_ptr"] == single_process_step["queue_ptr"] == WORLD_SIZE * PER_RANK
        for key in ("image_queue", "text_queue"):
            torch.testing.assert_close(step[key], single_process_step[key], rtol=1e-5, atol=1e-6)
            # and not in another order: the columns of rank 1 differ from those of rank 0
            assert not torch.allclose(step[key][:, :PER_RANK], step[key][:, PER_RANK:])


def test_per_sample_terms_give_the_loss_and_gradients_of_one_big_batch(ranks, single_process_step):
    want = single_process_step
    for result in ranks:
        got = result["step"]
        torch.testing.assert_close(got["loss"], want["loss"], rtol=1e-5, atol=1e-6)
        assert set(got["grads"]) == set(want["grads"])
        assert any(g.abs().sum() > 0 for g in want["grads"].values())
        for name, grad in want["grads"].items():
            torch.testing.assert_close(got["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_distributed_itm_rerank_gives_exactly_the_single_process_metrics(ranks):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = evaluate_retrieval()
    finally:
        torch.set_num_threads(threads)
    assert any(k.startswith("itm_") for k in single)
    for result in ranks:
        assert result["retrieval"] == single
