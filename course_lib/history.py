"""``History``: what ``course_lib.training.fit`` records per epoch, for tables and plots.

    history = fit(model, data, epochs=10)
    history.best_epoch              # the epoch (from 1) with the lowest validation loss
    pandas.DataFrame(history.to_rows())
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["History"]


@dataclasses.dataclass
class History:
    """Per-epoch record of a ``fit`` run (index i is epoch i + 1); None where not computed."""

    train_loss: list[float] = dataclasses.field(default_factory=list)
    valid_loss: list[float | None] = dataclasses.field(default_factory=list)
    valid_accuracy: list[float | None] = dataclasses.field(default_factory=list)
    valid_bleu: list[float | None] = dataclasses.field(default_factory=list)
    tokens_per_second: list[float] = dataclasses.field(default_factory=list)
    seconds: list[float] = dataclasses.field(default_factory=list)  # training + evaluation
    learning_rate: list[float] = dataclasses.field(default_factory=list)  # at the epoch's end

    def __len__(self) -> int:
        return len(self.train_loss)

    @property
    def best_epoch(self) -> int | None:
        """Epoch (from 1) with the lowest validation loss (training loss if none was measured)."""
        losses = self.valid_loss if any(v is not None for v in self.valid_loss) else self.train_loss
        scored = [(loss, i + 1) for i, loss in enumerate(losses) if loss is not None]
        return min(scored)[1] if scored else None

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per epoch (``epoch`` from 1), e.g. for ``pandas.DataFrame(rows)``."""
        columns = dataclasses.asdict(self)
        return [{"epoch": i + 1, **{k: v[i] for k, v in columns.items()}}
                for i in range(len(self))]

    def format_epoch(self, i: int, epochs: int) -> str:
        """One log line for the epoch at index ``i``."""
        parts = [f"epoch {i + 1}/{epochs}", f"train loss {self.train_loss[i]:.4f}"]
        if self.valid_loss[i] is not None:
            parts += [f"valid loss {self.valid_loss[i]:.4f}", f"acc {self.valid_accuracy[i]:.3f}"]
        if self.valid_bleu[i] is not None:
            parts.append(f"BLEU {self.valid_bleu[i]:.1f}")
        parts += [f"{self.tokens_per_second[i]:,.0f} tok/s", f"{self.seconds[i]:.1f} s"]
        return " | ".join(parts)
