import os
import subprocess
import sys

import pytest
import torch
import yaml
from torch import nn

from conftest import ROOT
from mnistflow.core.errors import ConfigError
from mnistflow.models import MODELS, check_input, create_model, model_names
from mnistflow.models.dynamic import MAX_REPEATS
from mnistflow.models.two_layer import MyReLU

MNIST, CIFAR = (1, 28, 28), (3, 32, 32)
EXPECTED_PARAMS = {
    "mlp": 784 * 500 + 500 + 500 * 10 + 10,
    "cnn": (20 * 9 + 20) + (40 * 20 * 9 + 40) + (1000 * 240 + 240) + (240 * 120 + 120)
    + (120 * 84 + 84) + (84 * 10 + 10),
    "lenet": (6 * 9 + 6) + (16 * 6 * 9 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10),
    "two_layer": 784 * 100 + 100 + 100 * 10 + 10,
    "dynamic": 784 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10,
    "seq_cnn": (64 * 3 * 25 + 64) + (30 * 64 * 25 + 30) + (750 * 10 + 10),
}
SHAPE = {"seq_cnn": CIFAR}


def test_registry_names_the_tutorial_models():
    assert model_names() == ["cnn", "dynamic", "lenet", "mlp", "seq_cnn", "two_layer"]


@pytest.mark.parametrize("name", model_names())
def test_every_model_maps_a_batch_to_ten_logits(name):
    shape = SHAPE.get(name, MNIST)
    model = create_model(name, shape)
    assert model(torch.zeros(3, *shape)).shape == (3, 10)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[name]


def test_models_that_flatten_take_any_shape_and_the_others_theirs_only():
    assert create_model("mlp", CIFAR)(torch.zeros(2, *CIFAR)).shape == (2, 10)
    with pytest.raises(ConfigError, match=r"model 'lenet' takes 1x28x28 images .* dataset 'cifar10' has 3x32x32"):
        check_input("lenet", "cifar10", CIFAR)
    with pytest.raises(ConfigError, match=r"model 'seq_cnn' takes 3x32x32 .* 'fashion_mnist' has 1x28x28"):
        check_input("seq_cnn", "fashion_mnist", MNIST)


@pytest.mark.parametrize("model, dataset, message", [
    ("seq_cnn", "fashion_mnist", "model 'seq_cnn' takes 3x32x32 images (channels x height x width), "
                                 "but dataset 'fashion_mnist' has 1x28x28"),
    ("lenet", "cifar10", "model 'lenet' takes 1x28x28 images (channels x height x width), "
                         "but dataset 'cifar10' has 3x32x32"),
])
def test_check_params_refuses_a_model_the_dataset_cannot_feed(tmp_path, model, dataset, message):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["models"] = ["mlp", model]
    params["data"]["dataset"] = dataset
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    stamp = tmp_path / "params.ok"
    out = subprocess.run([sys.executable, str(ROOT / "stages/check_params.py"), str(stamp)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert message in out.stderr
    assert not stamp.exists()


def test_my_relu_backward_is_the_gradient_of_its_forward():
    x = torch.randn(64, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(MyReLU.apply, (x,))


def test_dynamic_draws_its_depth_from_the_run_seed_and_is_fixed_in_evaluation():
    def trained(seed):
        torch.manual_seed(seed)
        model = create_model("dynamic")
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        depths = []
        for step in range(12):
            depths.append(model.depth())
            x, y = torch.rand(8, *MNIST), torch.randint(0, 10, (8,))
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return model, depths

    (a, depths_a), (b, depths_b) = trained(0), trained(0)
    assert depths_a == depths_b and len(set(depths_a)) > 1 and set(depths_a) <= set(range(MAX_REPEATS + 1))
    for (name, wa), (_, wb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(wa, wb), name
    assert trained(1)[1] != depths_a  # another seed, other depths
    a.eval()
    x = torch.rand(4, *MNIST)
    # Evaluation: the mean of the logits over every depth, computed here by hand from the layers.
    relu = lambda t: t.clamp(min=0)  # noqa: E731
    h, logits = relu(a.input_linear(x.flatten(1))), []
    for _ in range(MAX_REPEATS + 1):
        logits.append(a.output_linear(h))
        h = relu(a.middle_linear(h))
    passes = int(a.passes)
    torch.testing.assert_close(a(x), torch.stack(logits).mean(0))
    assert int(a.passes) == passes  # no training pass counted, no draw


def test_unknown_model_suggests_the_closest():
    with pytest.raises(ConfigError, match="unknown model 'lenett'; did you mean 'lenet'"):
        create_model("lenett")


def test_the_registry_lists_and_checks_models_without_importing_torch_or_any_model():
    """check_params asks it for names and shapes: neither torch nor a model module may load."""
    code = ("import sys; from mnistflow.models import check_input, model_names; check_input('cnn', 'mnist', (1, 28, 28)); "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('mnistflow.models.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")}).stdout
    assert out.strip() == "['mnistflow.models.registry']"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_registered_name_is_its_module_and_class(name):
    model = create_model(name, (3, 32, 32) if name == "seq_cnn" else (1, 28, 28))
    assert isinstance(model, nn.Module)
    assert type(model).__module__ in (f"mnistflow.models.{name}", "torch.nn.modules.container")


def test_every_registered_model_has_default_settings():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(model_names()) <= set(params["train"])
