"""Learning test: retrieval fine-tuning of the shared demo pretraining checkpoint raises R@1
above the same checkpoint's zero-shot figures, for ITC and for the ITM re-ranking, in both
directions.

The zero-shot figures are the ``demo_pretrain`` fixture's final test evaluation (the same
weights, the same test split of the same world, the same ``k_test``); the fine-tuning runs
``projects/albef/configs/demo/retrieval.yaml`` as a user would, at the fixture's model sizes.
"""
import json
from pathlib import Path

import pytest

from albef_plugin.run import run

DEMO = str(Path(__file__).resolve().parents[2] / "projects/albef/configs/demo/retrieval.yaml")
KEYS = ("itc_txt_r1", "itc_img_r1", "itm_txt_r1", "itm_img_r1")


@pytest.mark.slow
def test_fine_tuning_beats_zero_shot_in_both_directions(demo_pretrain, tmp_path):
    save_dir = tmp_path / "save"
    run([f"config={DEMO}", f"env.save_dir={save_dir}", "run_type=train_test",
         *demo_pretrain.model_dotlist("albef_retrieval"),
         *demo_pretrain.synthetic_dotlist("demo_retrieval"),
         f"model_config.albef_retrieval.checkpoint={demo_pretrain.checkpoint}",
         "training.max_updates=MAX_UPDATES", "training.evaluation_interval=0",
         "training.checkpoint_interval=100000", "training.log_interval=25",
         "training.progress_bar=false", "training.tensorboard=false", "training.plot=false",
         "evaluation.metrics=[{type: retrieval, params: {k_test: 8}}]"])  # the fixture's k_test

    records = [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if r.get("kind") == "eval" and r.get("split") == "test"][-1]
    for key in KEYS:
        zero_shot = demo_pretrain.zero_shot[f"test/demo_pretrain/{key}"]
        tuned = final[f"test/demo_retrieval/{key}"]
        assert tuned >= zero_shot + MARGIN, \
            f"{key}: {tuned:.1f}% after fine-tuning vs {zero_shot:.1f}% zero-shot"
