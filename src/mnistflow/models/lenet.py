"""The PyTorch tutorial's LeNet, sized for 28x28 inputs."""
import torch.nn.functional as F
from torch import nn


class LeNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3)   # 28 -> 26, pooled to 13
        self.conv2 = nn.Conv2d(6, 16, 3)  # 13 -> 11, pooled to 5
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = F.max_pool2d(self.conv1(x).relu(), 2)
        x = F.max_pool2d(self.conv2(x).relu(), 2)
        x = self.fc1(x.flatten(1)).relu()
        x = self.fc2(x).relu()
        return self.fc3(x)

