"""Exact resume: k updates + resume + k more == 2k uninterrupted, with every kind of randomness.

The toy model uses dropout and ``torch.randn`` in its forward; the toy dataset augments with
torch, python and numpy random numbers. The checkpoint at update 5 is in the middle of
epoch 1 (4 batches per epoch), and the cosine schedule depends on max_updates, which is the
same in both runs.
"""
import pytest
import torch

from .toy_components import load_ckpt, make_config, read_records, run_trainer

K = 5


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch_reproduces_the_uninterrupted_run(tmp_path, num_workers):
    common = [f"training.max_updates={2 * K}", f"training.num_workers={num_workers}",
              "training.persistent_workers=true", "training.update_frequency=1"]
    full = run_trainer(make_config(tmp_path / "full", *common, f"training.checkpoint_interval={K}"))
    snapshot = tmp_path / "full" / "models" / f"model_{K}.ckpt"
    assert load_ckpt(snapshot)["data"]["iteration_in_epoch"] == 1       # mid-epoch
    resumed = run_trainer(make_config(tmp_path / "resumed", *common, f"checkpoint.resume_file={snapshot}"))

    def losses(run_dir):
        return {r["update"]: (r["train/mse"], r["train/aux"], r["lr"])
                for r in read_records(run_dir, "train") if r["update"] > K}

    expected, got = losses(tmp_path / "full"), losses(tmp_path / "resumed")
    assert sorted(got) == list(range(K + 1, 2 * K + 1))
    assert len({v[0] for v in expected.values()}) == K                 # the losses do vary
    for update in expected:
        assert got[update] == pytest.approx(expected[update], abs=1e-6), update
    for (name, p), q in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(p.float(), q.float(), atol=1e-6), name
    assert full.model.alphas[K:] == pytest.approx(resumed.model.alphas)


def test_resume_without_rng_restore_would_differ(tmp_path):
    """Guard for the test above: a reset of counts (hence no RNG / data position) changes the losses."""
    common = [f"training.max_updates={2 * K}", f"training.checkpoint_interval={K}"]
    run_trainer(make_config(tmp_path / "full", *common))
    snapshot = tmp_path / "full" / "models" / f"model_{K}.ckpt"
    run_trainer(make_config(tmp_path / "other", f"training.max_updates={K}",
                            f"checkpoint.resume_file={snapshot}", "checkpoint.reset.counts=true"))
    full = [r["train/mse"] for r in read_records(tmp_path / "full", "train")][K:]
    other = [r["train/mse"] for r in read_records(tmp_path / "other", "train")]
    assert full != pytest.approx(other, abs=1e-6)
