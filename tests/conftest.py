"""Suite-wide settings (offline, quiet, deterministic) and the shared demo pretraining.

``demo_pretrain`` (session scope) generates the synthetic demo world once, with every
task's annotations, and pretrains a small ALBEF on it once; every downstream learning test
(retrieval, VE, NLVR2, VQA, grounding) starts from that checkpoint::

    @pytest.mark.slow
    def test_ve_learns(demo_pretrain, tmp_path):
        run([f"config={VE_DEMO}", f"env.save_dir={tmp_path}",
             *demo_pretrain.model_dotlist("albef_ve"),        # the pretrained model's sizes
             *demo_pretrain.synthetic_dotlist("demo_ve"),     # env.data_dir and this world
             ...])                                            # + the task's key loading demo_pretrain.checkpoint
"""
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

import pytest

# Belt and braces: the Makefile sets these before Python starts; running pytest directly
# must not reach the network either.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEMO_PRETRAIN_CONFIG = Path(__file__).resolve().parent.parent / "projects/albef/configs/demo/pretrain.yaml"

# The world of the downstream tests. Each image's content depends only on (seed, split,
# index), so these counts change which images exist, never what an image shows.
DEMO_WORLD = {"num_train": 1000, "num_val": 100, "num_test": 200}
# The demo model (projects/albef/configs/demo/pretrain.yaml) shrunk to width 64 and a
# 2-block ViT, so the pretraining fits in about five minutes on two cores. Task models
# take the same sizes to load the checkpoint.
# Two fusion layers (the demo has three): the downstream tests' thresholds were measured with it.
DEMO_MODEL = {"image_encoder.width": 64, "image_encoder.depth": 2, "text_encoder.hidden_size": 64,
              "text_encoder.intermediate_size": 256, "text_encoder.num_hidden_layers": 4,
              "embed_dim": 64}
# ITC leaves chance after ~250 updates at this size (ln 32 until then): the learning rate
# stays high afterwards so the run ends well above chance.
# The batch size, the loss weights, one ITM negative and the start of every objective at
# update 0 are pinned here (not inherited from the demo config, which may be retuned) so the
# downstream tests' thresholds stay calibrated; no periodic evaluation, to keep it short.
DEMO_TRAINING = ["training.max_updates=500", "training.batch_size=32", "scheduler.params.min_lr=3e-4",
                 "training.log_interval=50",
                 "training.evaluation_interval=0",
                 "model_config.albef_pretrain.loss_weights.itc=1.0",
                 "model_config.albef_pretrain.loss_weights.itm=1.0",
                 "model_config.albef_pretrain.loss_weights.mlm=0.02",
                 "model_config.albef_pretrain.itc_only_updates=0",
                 "model_config.albef_pretrain.itm_negatives=1",
                 "training.checkpoint_interval=100000", "training.progress_bar=false",
                 "training.tensorboard=false", "training.plot=false",
                 "evaluation.metrics=[{type: retrieval, params: {k_test: 8}}]"]


@dataclass(frozen=True)
class DemoPretrain:
    """What the shared demo pretraining produced.

    Attributes:
        data_dir: the ``env.data_dir`` holding the world (``<data_dir>/synthetic/<world>``).
        world_dir: the generated world, task annotations under ``world_dir / "tasks"``.
        save_dir: the pretraining run's folder (``metrics.jsonl``, ``config.yaml``, ...).
        checkpoint: the final checkpoint (``save_dir / "current.ckpt"``).
        zero_shot: the final test evaluation, ``{"test/demo_pretrain/itc_txt_r1": ..., ...}``.
        world: the synthetic world's counts (``DEMO_WORLD``).
        model: the model sizes, as keys under ``model_config.<model>`` (``DEMO_MODEL``).
    """

    data_dir: Path
    world_dir: Path
    save_dir: Path
    checkpoint: Path
    zero_shot: Dict[str, float]
    world: Dict[str, int] = field(default_factory=lambda: dict(DEMO_WORLD))
    model: Dict[str, Any] = field(default_factory=lambda: dict(DEMO_MODEL))

    def model_dotlist(self, model: str) -> List[str]:
        """``model_config.<model>.<key>=<value>`` overrides giving a task model these sizes
        (only the keys its config has: e.g. VE and NLVR2 have no ITC ``embed_dim``)."""
        from omegaconf import OmegaConf

        from albef_plugin.models import model_config

        defaults = model_config(model)
        return [f"model_config.{model}.{key}={value}" for key, value in self.model.items()
                if OmegaConf.select(defaults, key, default=None) is not None]

    def synthetic_dotlist(self, builder: str) -> List[str]:
        """``env.data_dir`` and ``dataset_config.<builder>.synthetic.*`` overrides selecting
        this world (for builders with the ``synthetic`` block of the demo builders)."""
        return [f"env.data_dir={self.data_dir}"] + [
            f"dataset_config.{builder}.synthetic.{key}={value}" for key, value in self.world.items()]


def _generate_world(data_dir: Path) -> Path:
    """The world of ``DEMO_WORLD`` with every task's files, where the demo builders look."""
    from albef_plugin.datasets.synthetic.__main__ import main as synthetic_main
    from albef_plugin.datasets.synthetic.generate import WorldSpec, world_is_complete

    spec = WorldSpec(**DEMO_WORLD)
    world_dir = data_dir / "synthetic" / spec.folder_name()
    # the command line `python -m albef_plugin.datasets.synthetic --tasks`, in this process
    assert synthetic_main(["--out", str(world_dir), "--tasks"] + [
        arg for key, value in DEMO_WORLD.items() for arg in (f"--{key.replace('_', '-')}", str(value))]) == 0
    assert world_is_complete(world_dir, spec) and (world_dir / "tasks").is_dir()
    return world_dir


@pytest.fixture(scope="session")
def demo_pretrain(tmp_path_factory: pytest.TempPathFactory) -> DemoPretrain:
    """Generate the demo world and pretrain the shrunk demo model on it, once per session."""
    from albef_plugin.run import run

    root = tmp_path_factory.mktemp("demo_pretrain")
    data_dir, save_dir = root / "data", root / "save"
    world_dir = _generate_world(data_dir)
    run([f"config={DEMO_PRETRAIN_CONFIG}", f"env.save_dir={save_dir}", f"env.data_dir={data_dir}",
         *[f"dataset_config.demo_pretrain.synthetic.{key}={value}" for key, value in DEMO_WORLD.items()],
         *[f"model_config.albef_pretrain.{key}={value}" for key, value in DEMO_MODEL.items()],
         *DEMO_TRAINING])
    records = [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if r.get("kind") == "eval" and r.get("split") == "test"][-1]
    zero_shot = {key: value for key, value in final.items() if key.startswith("test/")}
    return DemoPretrain(data_dir=data_dir, world_dir=world_dir, save_dir=save_dir,
                        checkpoint=save_dir / "current.ckpt", zero_shot=zero_shot)
