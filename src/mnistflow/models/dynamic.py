"""The tutorials' DynamicNet: an input layer, a middle layer reused 0 to 3 times, an output layer.

In training, each forward pass draws its depth. The draw comes from a generator seeded by the
run's seed (the global seed when the model is made: `set_determinism` runs first) and the number
of training passes so far; both are buffers, saved with the weights and in the checkpoint, so two
runs with one seed, and a run resumed after a kill, are byte-identical. In evaluation (and when
served) the output is the mean of the logits of the four depths: the expected network, the same
on every call, with no random draw to export.
"""
import math

import torch
from torch import nn


MAX_REPEATS = 3


class DynamicNet(nn.Module):
    def __init__(self, shape=(1, 28, 28), hidden: int = 100, num_classes: int = 10):
        super().__init__()
        self.input_linear = nn.Linear(math.prod(shape), hidden)
        self.middle_linear = nn.Linear(hidden, hidden)
        self.output_linear = nn.Linear(hidden, num_classes)
        self.register_buffer("seed", torch.tensor(torch.initial_seed() % 2**62))
        self.register_buffer("passes", torch.zeros((), dtype=torch.int64))

    def depth(self) -> int:
        """How many times the next training pass reuses the middle layer."""
        gen = torch.Generator().manual_seed((int(self.seed) * 1_000_003 + int(self.passes)) % 2**63)
        return int(torch.randint(0, MAX_REPEATS + 1, (1,), generator=gen))

    def _head(self, h, repeats: int):
        for _ in range(repeats):
            h = self.middle_linear(h).clamp(min=0)
        return self.output_linear(h)

    def forward(self, x):
        h = self.input_linear(x.flatten(1)).clamp(min=0)
        if self.training:
            repeats = self.depth()
            self.passes += 1
            return self._head(h, repeats)
        return torch.stack([self._head(h, r) for r in range(MAX_REPEATS + 1)]).mean(0)
