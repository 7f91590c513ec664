"""Which weights the test splits are evaluated with at the end of a training run.

The paper's protocol for retrieval, SNLI-VE and NLVR2 reports the test metrics of the
checkpoint with the best validation criterion (``best.ckpt``), not of the last weights.
``evaluation.test_weights``:

- ``best`` (default): the model weights of ``best.ckpt`` (EMA / momentum encoders and queues
  included: they are part of the model state) are loaded before the test splits run. When
  no val split was evaluated in the run (VQA's official protocol has no val split: the last
  epoch is tested) there is no best, and the last weights are used, which the log says.
- ``last``: the weights training ended with.

Only the model weights are read; optimizer, counters and RNG states stay as they are (the
run ends after the test evaluation). The test records of ``metrics.jsonl`` carry
``weights`` (``best`` | ``last``) and ``weights_update`` (the update those weights are of).
"""
from __future__ import annotations

import logging
import math
import os
from typing import TYPE_CHECKING, Any, Dict

from albef_plugin.trainers.checkpointer import CheckpointError, load_checkpoint_file, load_model_state

if TYPE_CHECKING:
    from albef_plugin.trainers.trainer import Trainer

logger = logging.getLogger(__name__)

__all__ = ["load_test_weights"]


def load_test_weights(trainer: "Trainer") -> Dict[str, Any]:
    """Put the weights ``evaluation.test_weights`` asks for into ``trainer.model`` (every rank).

    Returns:
        The fields the test records carry: ``{"weights": "best" | "last", "weights_update": N}``.

    Raises:
        CheckpointError: a best evaluation is recorded but ``best.ckpt`` is gone.
    """
    update, best = trainer.state.update, trainer.best
    last = {"weights": "last", "weights_update": update}
    if trainer.config.evaluation.test_weights == "last":
        logger.info("test metrics of the last weights (update %d; evaluation.test_weights=last)", update)
        return last
    if best.key is None:
        logger.info("test metrics of the last weights (update %d): no val split was evaluated, so "
                    "there is no best.ckpt to test", update)
        return last
    if best.update is None:
        logger.warning("test metrics of the last weights (update %d): no val evaluation gave a "
                       "finite %s, so there is no best.ckpt to test", update, best.key)
        return last
    if best.update != update:
        path = trainer.checkpointer.best_path
        if not os.path.isfile(path):
            raise CheckpointError(
                f"{path} is missing, but the best {best.key} of this run is at update {best.update}: "
                f"the test splits cannot be evaluated with its weights. Restore the file, or set "
                f"evaluation.test_weights=last to test the last weights.")
        checkpoint = load_checkpoint_file(path, trainer.config.checkpoint.allow_unsafe_pickle)
        saved_update = checkpoint.get("train_state", {}).get("update")
        if saved_update != best.update:
            logger.warning("%s holds update %s, but the best %s of this run is at update %d; testing "
                           "the file's weights", path, saved_update, best.key, best.update)
        load_model_state(trainer.model, checkpoint["model"], strict=True, source=path)
        update = int(saved_update) if saved_update is not None else best.update
    else:
        update = best.update  # the weights in memory are best.ckpt's
    value = best.value if best.value is not None else math.nan
    logger.info("test metrics of best.ckpt (update %d, %s = %.4f)", update, best.key, value)
    return {"weights": "best", "weights_update": update}
