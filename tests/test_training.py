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
from mnistflow.train.training import evaluate_loss_acc as REAL_EVALUATE, fit

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


# Validation accuracy per epoch, as early stopping sees it: a peak at epoch 3 (epoch 4 gains
# less than min_delta over it), then a fall. The weights and losses are real.
PEAK = [0.50, 0.62, 0.70, 0.704, 0.69, 0.68, 0.60, 0.55]
STOPPING = ModelConfig.model_validate({**CFG.model_dump(), "epochs": 8, "early_stop": {"patience": 3, "min_delta": 0.005}})


def train_to_peak(monkeypatch, resume=None, kill_after=None, states=None):
    from mnistflow.train import training

    real, epochs = REAL_EVALUATE, iter(PEAK[len(resume["history"]) if resume else 0:])
    monkeypatch.setattr(training, "evaluate_loss_acc", lambda *a, **k: (real(*a, **k)[0], next(epochs)))
    torch.manual_seed(0)
    model, states = fast_layout(create_model("cnn")), {} if states is None else states

    def save_state(state):
        buf = io.BytesIO()
        torch.save(state, buf)
        states[state["epoch"]] = buf.getvalue()
        if state["epoch"] == kill_after:
            raise KeyboardInterrupt("killed")

    history = fit(model, split(64, 1), split(32, 2), STOPPING, NORM, seed=3, resume=resume, save_state=save_state)
    return model, history, states


def weights_bytes(state_dict) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in state_dict.items()}, buf)
    return buf.getvalue()


def test_early_stopping_stops_patience_epochs_after_the_best_and_keeps_its_weights(monkeypatch):
    model, history, states = train_to_peak(monkeypatch)
    assert [r.epoch for r in history] == [1, 2, 3, 4, 5, 6]  # best 3 (4 gained under min_delta), + patience 3
    best = torch.load(io.BytesIO(states[3]), weights_only=True)["model"]
    assert weights_bytes(model.state_dict()) == weights_bytes(best)
    last = torch.load(io.BytesIO(states[6]), weights_only=True)["model"]
    assert weights_bytes(model.state_dict()) != weights_bytes(last)  # the model did train on after the best


def test_early_stopping_killed_after_its_best_and_resumed_stops_at_the_same_epoch_with_the_same_weights(monkeypatch):
    full, full_history, _ = train_to_peak(monkeypatch)
    states = {}
    with pytest.raises(KeyboardInterrupt):
        train_to_peak(monkeypatch, kill_after=5, states=states)
    state = torch.load(io.BytesIO(states[5]), weights_only=True)
    resumed, history, _ = train_to_peak(monkeypatch, resume=state)
    assert [r.row() for r in history] == [r.row() for r in full_history]
    assert weights_bytes(resumed.state_dict()) == weights_bytes(full.state_dict())
