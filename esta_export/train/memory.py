"""Training memory by tensor accounting: what a training step holds, counted from its tensors.

Process RSS mixes the allocator's caching with the model and, on small models, is mostly noise.
``StepMemory`` observes the training step itself and only observes (nothing it does changes a value):

- activations: the tensors autograd saves for backward during one step, through a
  ``torch.autograd.graph.saved_tensors_hooks`` pack hook that returns the tensor unchanged; each
  storage counted once (views share one), parameters' own storages left out (they are weights).
  Every saved tensor lives until backward, so this is the step's peak of saved activations.
- grads: ``.grad`` of the trainable parameters after the step (what the optimizer consumed).
- optimizer: every tensor in ``optimizer.state`` (Adam: two moments and a step count per tensor).
- weights: all parameters, split into frozen and trainable.

Each figure is the maximum over the steps observed; the step with the most activations is kept.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch


def _storage(t: torch.Tensor) -> tuple[int, int]:
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    seen: dict[int, int] = {}
    for t in tensors:
        ptr, n = _storage(t)
        seen.setdefault(ptr, n)
    return sum(seen.values())


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return tensor_bytes(v for state in optimizer.state.values() for v in state.values()
                        if isinstance(v, torch.Tensor))


class StepMemory:
    """Per-step accounting of one model's training memory (see the module docstring)."""

    def __init__(self, model: torch.nn.Module) -> None:
        params = list(model.parameters())
        self._weights = {_storage(p)[0] for p in params}
        self.frozen_bytes = tensor_bytes(p for p in params if not p.requires_grad)
        self.trainable_bytes = tensor_bytes(p for p in params if p.requires_grad)
        self.activations = 0
        self.activations_at = None        # tag of the step with the most activations
        self.grads = 0
        self.optimizer = 0
        self.steps = 0

    @contextmanager
    def step(self, tag=None) -> Iterator[None]:
        """Count the tensors saved for backward while the block runs (one forward and backward)."""
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            ptr, n = _storage(t)
            if ptr not in self._weights:
                saved.setdefault(ptr, n)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield
        total = sum(saved.values())
        if total > self.activations:
            self.activations, self.activations_at = total, tag
        self.steps += 1

    def observe(self, params: Iterable[torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
        """After a step: the gradients it left and the optimizer's state."""
        self.grads = max(self.grads, tensor_bytes(p.grad for p in params if p.grad is not None))
        self.optimizer = max(self.optimizer, optimizer_state_bytes(optimizer))

    @property
    def states(self) -> int:
        return self.grads + self.optimizer

    def record(self) -> dict:
        return {"activations": self.activations, "activations_at": self.activations_at, "grads": self.grads,
                "optimizer": self.optimizer, "states": self.states, "frozen_weights": self.frozen_bytes,
                "trainable_weights": self.trainable_bytes, "steps": self.steps}
