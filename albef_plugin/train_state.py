"""Training progress, handed to models explicitly (never smuggled through the batch)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional


@dataclass
class TrainState:
    """Where training stands.

    Attributes:
        epoch: index of the current epoch (0-based).
        update: optimizer updates done so far.
        iteration_in_epoch: batches consumed in the current epoch (0-based index of the next).
        iterations_per_epoch: batches per epoch on this rank (len of the train loader).
        alpha: distillation weight for the next forward, set by the trainer from
            ``model.alpha_for(state)``; None means "use the model's configured alpha".
        first_micro_batch: True when this forward is the first micro-batch of an optimizer
            update (set by the trainer with ``training.update_frequency > 1``). Models with a
            momentum (EMA) encoder step it only then: once per update, not once per
            micro-batch with the same online weights. A loop of its own that leaves it True
            gets the official behaviour (an EMA step every training forward).
    """

    epoch: int = 0
    update: int = 0
    iteration_in_epoch: int = 0
    iterations_per_epoch: int = 1
    alpha: Optional[float] = None
    first_micro_batch: bool = True

    @property
    def epoch_progress(self) -> float:
        """Progress in (fractional) epochs, e.g. 0.5 halfway through the first epoch."""
        return self.epoch + self.iteration_in_epoch / max(1, self.iterations_per_epoch)

    def state_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)
