"""The tutorials' TwoLayerNet (Linear, ReLU, Linear) with their MyReLU: a ReLU written as a
`torch.autograd.Function` with its own forward and backward, for any input size."""
import math

import torch
from torch import nn


class MyReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output.masked_fill(x < 0, 0)  # as the tutorial: the gradient passes where x >= 0


class TwoLayerNet(nn.Module):
    def __init__(self, shape=(1, 28, 28), hidden: int = 100, num_classes: int = 10):
        super().__init__()
        self.linear1 = nn.Linear(math.prod(shape), hidden)
        self.linear2 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.linear2(MyReLU.apply(self.linear1(x.flatten(1))))
