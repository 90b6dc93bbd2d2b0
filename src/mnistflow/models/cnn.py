"""The Fashion-MNIST tutorial's NeuralNet: two 3x3 convs with pooling, four linear layers."""
import torch.nn.functional as F
from torch import nn


class CNN(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 3)   # 28 -> 26, pooled to 13
        self.conv2 = nn.Conv2d(20, 40, 3)  # 13 -> 11, pooled to 5
        self.fc1 = nn.Linear(40 * 5 * 5, 240)
        self.fc2 = nn.Linear(240, 120)
        self.fc3 = nn.Linear(120, 84)
        self.fc4 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = F.max_pool2d(self.conv1(x).relu(), 2)
        x = F.max_pool2d(self.conv2(x).relu(), 2)
        x = self.fc1(x.flatten(1)).relu()
        x = self.fc2(x).relu()
        x = self.fc3(x).relu()
        return self.fc4(x)

