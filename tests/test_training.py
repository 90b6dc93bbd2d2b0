"""The training loop in-process: a run stopped after epoch 2 and resumed from its saved state
ends byte-identical to one that ran all 4 epochs, in fp32 and under bf16 autocast (what `fast`
numerics runs on CPUs with bf16 units), each forced here whatever this CPU has."""
import functools
import io

import pytest
import torch

from mnistflow.core.config import ModelConfig
from mnistflow.core.device import fast_layout
from mnistflow.models.inference import Normalizer
from mnistflow.models import create_model
from mnistflow.data.splits import Split
from mnistflow.train.training import fit

# sgd with momentum, a cosine schedule and shift augmentation: every piece of state a resume must restore
CFG = ModelConfig.model_validate({"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
                                  "scheduler": {"name": "cosine"}, "epochs": 4, "batch_size": 16, "shift": 1})
NORM = Normalizer(mean=(0.5,), std=(0.25,))


def split(n: int, seed: int) -> Split:
    gen = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=gen),
                 torch.randint(0, 10, (n,), generator=gen))


CPU = torch.device("cpu")


def train(amp: bool, resume=None, kill_after=None, states=None):
    torch.manual_seed(0)
    model = fast_layout(create_model("cnn"))  # as the train stage: channels-last

    def save_state(state):  # through bytes, as the checkpoint file is: no live references
        buf = io.BytesIO()
        torch.save(state, buf)
        if states is not None:
            states.append(buf.getvalue())
        if state["epoch"] == kill_after:
            raise KeyboardInterrupt("killed")  # as SIGTERM is, once the checkpoint is written

    history = fit(model, split(64, 1), split(32, 2), CFG, NORM, seed=3, amp=amp,
                  resume=resume, save_state=save_state)
    return model, history


@functools.cache
def uninterrupted(amp: bool):
    return train(amp)


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_fit_for_4_epochs_equals_fit_for_2_then_resume_for_2(amp):
    full, full_history = uninterrupted(amp)
    states = []
    with pytest.raises(KeyboardInterrupt):
        train(amp, kill_after=2, states=states)
    state = torch.load(io.BytesIO(states[-1]), weights_only=True)
    assert state["epoch"] == 2 and len(state["history"]) == 2
    resumed, history = train(amp, resume=state)
    assert [r.row() for r in history] == [r.row() for r in full_history]
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_the_two_cases_compute_differently():
    """bf16 autocast really ran: its weights are not fp32's."""
    fp32, bf16 = uninterrupted(False)[0].state_dict(), uninterrupted(True)[0].state_dict()
    assert not all(torch.equal(fp32[k], bf16[k]) for k in fp32)
