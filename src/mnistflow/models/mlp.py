"""The MNIST tutorial's fully connected net: 784 -> 500 -> 10."""
from torch import nn

from mnistflow.models.registry import register


@register("mlp")
class MLP(nn.Module):
    def __init__(self, hidden: int = 500, num_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.fc2(self.fc1(x.flatten(1)).relu())

