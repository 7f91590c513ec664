"""Two CPU processes (gloo) train the toy model with DDP; one spawn covers all DDP checks."""
import os
import signal
import socket

import pytest
import torch
import torch._dynamo  # noqa: F401  (imported once here, before forking; see the test)
import torch.multiprocessing as mp

from albef_plugin.distributed import destroy_distributed, init_distributed
from albef_plugin.trainers.data import ResumableDistributedSampler
from albef_plugin.trainers.preemption import STOP_SIGNALS, RunPreempted

from .toy_components import build_trainer, load_ckpt, make_config, read_records

WORLD_SIZE = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, save_dir: str, port: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    assert init_distributed(backend="gloo", timeout_minutes=1)
    try:
        # 16 samples / 2 ranks / batch 4: 2 iterations per epoch; 2 micro-batches per update
        config = make_config(save_dir, "run_type=train_val", "training.max_updates=4",
                             "training.update_frequency=2", "training.log_interval=2",
                             "training.checkpoint_interval=2", "training.evaluation_interval=2",
                             "dataset_config.toy_data.skip_indices=[0]")
        trainer = build_trainer(config)
        seen = []
        collate = trainer.batches.loader.collate_fn
        trainer.batches.loader.collate_fn = lambda samples: seen.extend(
            s["index"] for s in samples if s is not None) or collate(samples)
        trainer.run()
        # rank 0's first batch entirely unreadable (dropped): both ranks skip that step together
        first_of_rank0 = ResumableDistributedSampler(16, WORLD_SIZE, 0, seed=42).indices()[:4]
        dropped = build_trainer(make_config(
            os.path.join(save_dir, "dropped"), "training.max_updates=2",
            f"dataset_config.toy_data.skip_indices={first_of_rank0}"))
        dropped.run()
        torch.save({"params": {n: p.detach() for n, p in trainer.model.named_parameters()},
                    "seen": seen, "update": trainer.state.update,
                    "dropped_forwards": int(dropped.model.num_train_forwards),
                    "dropped_update": dropped.state.update,
                    "preemption": _preempted_then_resumed(rank, save_dir)},
                   os.path.join(save_dir, f"rank{rank}.pt"))
    finally:
        destroy_distributed()


def _preempted_then_resumed(rank: int, root: str) -> dict:
    """Rank 1 alone gets a real USR2 after update 2; both ranks must stop after update 3."""
    opts = ["training.max_updates=6", "training.num_workers=1", "training.persistent_workers=true"]
    reference = build_trainer(make_config(os.path.join(root, "reference"), *opts))
    reference.run()
    STOP_SIGNALS.install()
    cut_dir = os.path.join(root, "preempted")
    trainer = build_trainer(make_config(cut_dir, *opts))
    train_step = trainer.train_step

    def step_then_signal(micro_batches):
        train_step(micro_batches)
        if rank == 1 and trainer.state.update == 2:
            os.kill(os.getpid(), signal.SIGUSR2)
            os.kill(os.getpid(), signal.SIGUSR2)  # twice: harmless

    trainer.train_step = step_then_signal
    stopped_at = signal_name = None
    try:
        trainer.run()
    except RunPreempted as stop:
        stopped_at, signal_name = stop.update, stop.signal_name
    STOP_SIGNALS.uninstall()
    STOP_SIGNALS.reset()
    resumed = build_trainer(make_config(cut_dir, *opts, "checkpoint.resume=true"))
    start = resumed.state.update
    resumed.run()
    return {"stopped_at": stopped_at, "signal": signal_name, "resumed_from": start,
            "params": {n: p.detach() for n, p in resumed.model.named_parameters()},
            "reference": {n: p.detach() for n, p in reference.model.named_parameters()}}


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("ddp")
    # fork: the children inherit the imported modules (torch, torch._dynamo pulled in by the
    # optimizers), which saves ~10 s of start-up per child on a small machine
    mp.start_processes(_worker, args=(str(tmp_path), _free_port()), nprocs=WORLD_SIZE, join=True,
                       start_method="fork")
    return tmp_path, [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]


def test_two_process_ddp(ddp_results):
    tmp_path, results = ddp_results
    assert results[0]["update"] == results[1]["update"] == 4
    # the all-dropped batch of rank 0 was skipped by both ranks (no hang, same counts)
    assert [r["dropped_update"] for r in results] == [2, 2]
    assert [r["dropped_forwards"] for r in results] == [1, 1]
    assert read_records(tmp_path / "dropped", "train")[0]["num_skipped"] == 8
    for name, param in results[0]["params"].items():
        assert torch.equal(param, results[1]["params"][name]), name
    initial = load_ckpt(tmp_path / "models" / "model_2.ckpt")["model"]
    assert not torch.equal(results[0]["params"]["embed.weight"], torch.zeros_like(initial["embed.weight"]))
    # each epoch is split between the ranks: disjoint halves of the data
    epoch0 = [r["seen"][:8] for r in results]
    assert not set(epoch0[0]) & set(epoch0[1])
    # rank 0 alone writes the logs; losses are averaged and samples summed over ranks
    train = read_records(tmp_path, "train")
    assert [r["update"] for r in train] == [2, 4]
    # 4 updates x 2 micro-batches = 8 iterations = 4 epochs of 2 iterations per rank
    assert sum(r["num_skipped"] for r in train) == 4                  # index 0 once per epoch
    assert [r["num_skipped"] for r in read_records(tmp_path, "epoch")] == [1, 1, 1, 1]
    assert [r["update"] for r in read_records(tmp_path, "eval")] == [2, 4]
    current = load_ckpt(tmp_path / "current.ckpt")
    assert len(current["rng"]) == WORLD_SIZE and current["data"]["world_size"] == WORLD_SIZE
    assert not torch.equal(current["rng"][0]["torch"], current["rng"][1]["torch"])  # seed + rank


def test_a_signal_on_one_rank_stops_both_after_the_same_update_and_resume_is_exact(ddp_results):
    tmp_path, results = ddp_results
    for rank, result in enumerate(results):
        preemption = result["preemption"]
        # sent after update 2, agreed one update late: both ranks stop after update 3
        assert preemption["stopped_at"] == 3 and preemption["resumed_from"] == 3
        assert preemption["signal"] == "SIGUSR2"  # agreed: rank 0 knows which signal it was
        for name, param in preemption["reference"].items():
            assert torch.equal(preemption["params"][name], param), name
    assert load_ckpt(tmp_path / "preempted" / "current.ckpt")["train_state"]["update"] == 6
    assert [r["update"] for r in read_records(tmp_path / "preempted", "train")] == [1, 2, 3, 4, 5, 6]
