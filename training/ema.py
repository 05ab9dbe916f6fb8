"""An exponential moving average of the model's weights (``--ema DECAY``).

The backtracking models' greedy accuracy swings by tens of points between checkpoints a
few dozen steps apart: one ``<backtrack>`` token competes with the first digit of the
next step, and each batch tips that margin. Averaging the weights over the last
``1 / (1 - decay)`` steps evaluates and ships the middle of that swing instead of
wherever the last step left it. The raw weights keep training; evaluation, the best-on-val
copy and the saved model use the average.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"--ema must be between 0 and 1 (e.g. 0.995), got {decay}")
        self.model, self.decay = model, decay
        self.params = [p for p in model.parameters()]
        self.shadow = [p.detach().float().clone() for p in self.params]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current weights in; the first steps average with a shorter horizon
        (``(1 + n) / (10 + n)``) so early averages are not dominated by the initial weights."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1.0 - decay)

    @contextmanager
    def applied(self):
        """The model holds the averaged weights inside the block, its own weights after."""
        with torch.no_grad():
            saved = [p.detach().clone() for p in self.params]
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
        try:
            yield self.model
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved):
                    p.copy_(s)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]
        with torch.no_grad():
            for s, v in zip(self.shadow, state["shadow"]):
                s.copy_(v)
