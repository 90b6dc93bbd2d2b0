import pytest
import torch
from torch import nn

from mnistflow.errors import ConfigError
from mnistflow.models import create_model, model_names, register

EXPECTED_PARAMS = {
    "mlp": 784 * 500 + 500 + 500 * 10 + 10,
    "cnn": (20 * 9 + 20) + (40 * 20 * 9 + 40) + (1000 * 240 + 240) + (240 * 120 + 120)
    + (120 * 84 + 84) + (84 * 10 + 10),
    "lenet": (6 * 9 + 6) + (16 * 6 * 9 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10),
}


def test_registry_names_the_tutorial_models():
    assert model_names() == ["cnn", "lenet", "mlp"]


@pytest.mark.parametrize("name", model_names())
def test_every_model_maps_a_batch_to_ten_logits(name):
    model = create_model(name)
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[name]


def test_unknown_model_suggests_the_closest():
    with pytest.raises(ConfigError, match="unknown model 'lenett'; did you mean 'lenet'"):
        create_model("lenett")


def test_a_name_cannot_be_registered_twice():
    with pytest.raises(ValueError, match="registered twice"):
        register("mlp")(nn.Identity)
