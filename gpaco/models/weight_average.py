"""An exponential average of a model's weights over epochs (the DKL adversarial training's "SWA").

After training, the DKL code averages its per-epoch checkpoints 1..E with

    S_1 = w_1,    S_e = (1 - decay) * w_e + decay * S_{e-1}      (decay 0.9)

over every state-dict entry, BatchNorm buffers included (an integer counter such as
``num_batches_tracked`` becomes a float, as there). :class:`EpochAverage` keeps the same
average during the run, one update per finished epoch, so no epoch file has to be kept
(a WRN-34-10 epoch file is 185 MB): the averaged weights are part of the run's checkpoint
and a resumed run continues them. :func:`average_state_dicts` computes it from epoch files.
"""
from __future__ import annotations

from typing import Dict, Iterable, Mapping, Optional

import torch
from torch import Tensor

__all__ = ["EpochAverage", "average_state_dicts"]


class EpochAverage:
    """``S <- (1 - decay) * w + decay * S`` per :meth:`update`, ``S = w`` at the first."""

    def __init__(self, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EpochAverage: decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.count = 0
        self.average: Dict[str, Tensor] = {}

    def update(self, state: Mapping[str, Tensor]) -> None:
        """Blend in a model's ``state_dict()`` (a copy is kept, on the state's devices)."""
        with torch.no_grad():
            if self.count == 0:
                self.average = {k: _as_float(v).clone() for k, v in state.items()}
            else:
                if set(state) != set(self.average):
                    raise ValueError(f"EpochAverage: the state's keys changed (now {len(state)}, "
                                     f"averaged {len(self.average)})")
                for k, v in state.items():
                    self.average[k].mul_(self.decay).add_(_as_float(v), alpha=1.0 - self.decay)
        self.count += 1

    def state_dict(self) -> Dict[str, object]:
        return {"decay": self.decay, "count": self.count,
                "average": {k: v.detach().cpu().clone() for k, v in self.average.items()}}

    def load_state_dict(self, state: Mapping[str, object], device: Optional[torch.device] = None) -> None:
        if float(state["decay"]) != self.decay:
            raise ValueError(f"the checkpoint averages weights with decay {state['decay']}, this run with "
                             f"{self.decay} (--at-average-decay)")
        self.count = int(state["count"])
        self.average = {k: v.to(device) if device is not None else v.clone() for k, v in state["average"].items()}


def _as_float(value: Tensor) -> Tensor:
    return value.detach() if value.is_floating_point() else value.detach().double()


def average_state_dicts(states: Iterable[Mapping[str, Tensor]], decay: float) -> Dict[str, Tensor]:
    """The average of state dicts given in epoch order (see the module docstring)."""
    average = EpochAverage(decay)
    for state in states:
        average.update(state)
    if average.count == 0:
        raise ValueError("average_state_dicts: no state dict given")
    return average.average
