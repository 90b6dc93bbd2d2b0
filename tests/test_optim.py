import typing

import pytest
import torch

from mnistflow.core.config import ModelConfig
from mnistflow.train.optim import OPTIMIZERS, SCHEDULERS, build_optimizer, build_scheduler, step_scheduler


def model_config(optimizer="sgd", scheduler="none", epochs=4, weight_decay=0.0, **settings):
    return ModelConfig.model_validate({"optimizer": optimizer, "lr": 0.1, "momentum": 0.9, "weight_decay": weight_decay,
                                       "scheduler": {"name": scheduler, **settings}, "epochs": epochs,
                                       "batch_size": 8, "shift": 0})


TORCH_CLASS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adadelta": torch.optim.Adadelta,
               "adagrad": torch.optim.Adagrad, "rmsprop": torch.optim.RMSprop}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_is_built_with_the_config_and_reduces_a_loss(name):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5))
    opt = build_optimizer([w], model_config(name, weight_decay=0.01))
    assert type(opt) is TORCH_CLASS[name]
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[0]["weight_decay"] == 0.01
    if name in ("sgd", "rmsprop"):
        assert opt.param_groups[0]["momentum"] == 0.9
    assert bool(opt.defaults.get("fused")) == (name in ("sgd", "adam"))  # one kernel per step
    before = (w ** 2).sum().item()
    for _ in range(20):
        opt.zero_grad()
        (w ** 2).sum().backward()
        opt.step()
    assert (w ** 2).sum().item() < before


def lrs(cfg, val_losses):
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    sched = build_scheduler(opt, cfg)
    out = []
    for loss in val_losses:
        out.append(round(opt.param_groups[0]["lr"], 6))
        opt.step()
        step_scheduler(sched, loss)
    return out


@pytest.mark.parametrize("cfg, expected", [
    (model_config(scheduler="none"), [0.1, 0.1, 0.1, 0.1]),
    (model_config(scheduler="step", step_size=2, gamma=0.5), [0.1, 0.1, 0.05, 0.05]),
    (model_config(scheduler="multistep", milestones=[1, 3], gamma=0.1), [0.1, 0.01, 0.01, 0.001]),
    (model_config(scheduler="exponential", gamma=0.5), [0.1, 0.05, 0.025, 0.0125]),
    (model_config(scheduler="cosine", epochs=2, eta_min=0.0), [0.1, 0.05, 0.0, 0.05]),
], ids=["none", "step", "multistep", "exponential", "cosine"])
def test_every_scheduler_follows_its_settings(cfg, expected):
    assert lrs(cfg, [1.0] * len(expected)) == expected


def test_plateau_cuts_lr_when_val_loss_stalls():
    cfg = model_config(scheduler="plateau", factor=0.5, patience=1)
    # best 0.5 after epoch 2; epochs 3 and 4 do not improve: more than `patience` bad epochs
    assert lrs(cfg, [1.0, 0.5, 0.6, 0.6, 0.6]) == [0.1, 0.1, 0.1, 0.1, 0.05]


def test_every_scheduler_the_config_takes_is_built():
    names = {typing.get_args(m.model_fields["name"].annotation)[0]
             for m in typing.get_args(ModelConfig.model_fields["scheduler"].annotation)}
    assert names == {"none", *SCHEDULERS}
    assert set(typing.get_args(ModelConfig.model_fields["optimizer"].annotation)) == set(OPTIMIZERS)
