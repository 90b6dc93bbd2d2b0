"""The MNIST tutorial's fully connected net, for any input size: C*H*W -> 500 -> 10."""
import math

from torch import nn


class MLP(nn.Module):
    def __init__(self, shape=(1, 28, 28), hidden: int = 500, num_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(math.prod(shape), hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.fc2(self.fc1(x.flatten(1)).relu())
