"""Learning-rate schedules: the Transformer's warmup (Noam) schedule.

    import torch
    from course_lib.schedules import noam_lambda
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, noam_lambda(d_model=128,
                                                                         warmup_steps=400))

``course_lib.training.fit(..., warmup_steps=...)`` builds exactly this.
"""

from __future__ import annotations

import dataclasses

__all__ = ["NoamSchedule", "noam_lambda"]


@dataclasses.dataclass(frozen=True)
class NoamSchedule:
    """The Transformer's warmup schedule, as a ``LambdaLR`` multiplier of a base lr of 1.

    lr(step) = factor · d_model^-0.5 · min(step^-0.5, step · warmup_steps^-1.5), step = 1, 2, ...
    It rises linearly for ``warmup_steps`` optimizer steps, peaks there, then decays as
    1/sqrt(step). ``LambdaLR`` calls it with 0 before the first step, hence the ``+ 1``.
    """

    d_model: int
    warmup_steps: int
    factor: float = 1.0

    def __call__(self, step_index: int) -> float:
        step = step_index + 1  # LambdaLR's counter starts at 0; the formula's at 1
        return self.factor * self.d_model ** -0.5 * min(step ** -0.5,
                                                         step * self.warmup_steps ** -1.5)


def noam_lambda(d_model: int, warmup_steps: int, factor: float = 1.0) -> NoamSchedule:
    """``lr_lambda`` for ``torch.optim.lr_scheduler.LambdaLR`` (use an optimizer with lr=1)."""
    if d_model < 1 or warmup_steps < 1:
        raise ValueError(f"need d_model >= 1 and warmup_steps >= 1, got {d_model}, {warmup_steps}")
    return NoamSchedule(d_model, warmup_steps, factor)
