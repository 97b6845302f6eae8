import math

import pytest
import torch

from gpt2_cockpit.engine import config as cfgmod
from gpt2_cockpit.engine import faults
from gpt2_cockpit.engine import presets
from gpt2_cockpit.engine.errors import UserError
from gpt2_cockpit.engine.train import checkpoint as ckpt
from gpt2_cockpit.engine.train.owner import RunOwner
from gpt2_cockpit.engine.train.pretrain import PretrainWorkload
from gpt2_cockpit.engine.train.step import Stepper, lr_at
from conftest import tiny_overrides
from helpers import of_type, run_inprocess, step_losses


def test_loss_falls_and_run_contract(corpus):
    run, code, events = run_inprocess(corpus, "r", max_iters=60, eval_interval=30, learning_rate=3e-3, lr_decay_iters=60,
                                      sample_interval=60)
    assert code == 0
    evals = of_type(events, "eval")
    assert [e["iter"] for e in evals] == [0, 30, 60]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.8
    states = [e["state"] for e in of_type(events, "state")]
    assert states[0] == "preparing" and states[1] == "running" and states[-1] == "done"
    (r,) = of_type(events, "run")
    assert r["engine"] == "pretrain" and r["world_size"] == 1 and r["resumed_from"] is None and r["device"] == "cpu"
    step = of_type(events, "step")[-1]
    assert set(step) >= {"iter", "loss", "lr", "tokens", "tokens_per_sec", "ms", "mfu", "micro_batch", "grad_accum",
                         "grad_norm"}
    assert step["grad_norm"] > 0
    assert step["tokens"] == 60 * 4 * 2 * 16 and step["mfu"] is None  # no peak known for a CPU
    (sample,) = of_type(events, "sample")
    assert sample["iter"] == 60 and len(sample["text"]) > 50
    names = sorted(p.name for p in run.checkpoints.iterdir())
    assert names == ["best.pt", "ckpt-00000050.pt", "ckpt-00000060.pt"]  # the newest two and the best
    assert run.path.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_exact_resume_is_bit_for_bit(corpus, dropout):
    extra = [f"model.dropout={dropout}"]
    _, _, whole = run_inprocess(corpus, "whole", extra, max_iters=24)
    _, _, first = run_inprocess(corpus, "split", extra, max_iters=12)
    run, code, both = run_inprocess(corpus, "split", ["train.max_iters=24"], resume=True)
    assert code == 0
    runs = of_type(both, "run")
    assert runs[-1]["resumed_from"] == 12
    expected, got = step_losses(whole), step_losses(both)
    assert len(got) == 24
    assert got == expected  # exact float equality: same weights, optimizer, RNG and batches
    assert [e["val_loss"] for e in of_type(both, "eval") if e["iter"] == 20] == \
           [e["val_loss"] for e in of_type(whole, "eval") if e["iter"] == 20]


def test_same_tokens_whatever_the_split(corpus):
    _, _, a = run_inprocess(corpus, "a", micro_batch=8, grad_accum=1, max_iters=8)
    _, _, b = run_inprocess(corpus, "b", micro_batch=2, grad_accum=4, max_iters=8)
    la, lb = step_losses(a), step_losses(b)
    assert la.keys() == lb.keys()
    for k in la:
        assert la[k] == pytest.approx(lb[k], rel=1e-5, abs=1e-5)


def test_lr_schedule_warmup_cosine_floor():
    t = presets.load("cpu-tiny", ["train.warmup_iters=10", "train.lr_decay_iters=110"]).train
    assert lr_at(0, t) == pytest.approx(t.learning_rate / 11)
    assert lr_at(9, t) == pytest.approx(t.learning_rate * 10 / 11)
    assert lr_at(10, t) == pytest.approx(t.learning_rate)
    assert lr_at(60, t) == pytest.approx((t.learning_rate + t.min_lr) / 2)
    assert lr_at(110, t) == lr_at(10_000, t) == t.min_lr


def test_weight_decay_only_on_matrices(corpus):
    cfg = presets.load("cpu-tiny", tiny_overrides(corpus) + ["model.bias=true"])
    stepper = Stepper(cfg, PretrainWorkload(cfg), "cpu")
    decay, no_decay = stepper.optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])


def test_truncated_newest_checkpoint_falls_back(corpus):
    run, _, _ = run_inprocess(corpus, "c", max_iters=20)
    newest = ckpt.listing(run.checkpoints)[0]
    assert newest.name == "ckpt-00000020.pt"
    (run.checkpoints / "best.pt").unlink()
    newest.write_bytes(newest.read_bytes()[:1000])  # a crash mid-copy, a full disk...
    warnings = []
    path, state = ckpt.load_latest(run.checkpoints, warn=warnings.append)
    assert path.name == "ckpt-00000010.pt" and state["iter"] == 10
    assert len(warnings) == 1 and "unreadable" in warnings[0] and "ckpt-00000020.pt" in warnings[0]


def test_all_checkpoints_unreadable_is_one_sentence(corpus):
    run, _, _ = run_inprocess(corpus, "c", max_iters=10)
    for p in run.checkpoints.iterdir():
        p.write_bytes(b"garbage")
    with pytest.raises(UserError, match="unreadable"):
        ckpt.load_latest(run.checkpoints)


def test_checkpoint_is_data_never_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.save({"format": 1, "iter": 1, "model": {}, "x": Evil()}, folder / "ckpt-00000001.pt")
    with pytest.raises(UserError, match="unreadable"):
        ckpt.load_latest(folder, warn=lambda m: None)


def test_checkpoint_holds_everything_for_resume(corpus):
    run, _, _ = run_inprocess(corpus, "c", max_iters=10)
    state = ckpt.load_file(ckpt.listing(run.checkpoints)[0])
    assert set(state) >= {"model", "optimizer", "scaler", "iter", "best_val_loss", "rng", "data_position", "config"}
    assert state["data_position"] == state["iter"] == 10
    assert cfgmod.from_dict(state["config"]).train.max_iters == 10
    assert state["tokenizer"]["kind"] == "char" and "T" in state["tokenizer"]["chars"]


def test_nan_is_skipped_and_training_goes_on(corpus, monkeypatch):
    monkeypatch.setenv("GPT2_COCKPIT_FAKE_NAN_AT_ITER", "5")
    faults.reset()
    run, code, events = run_inprocess(corpus, "n", max_iters=12)
    assert code == 0
    (a,) = of_type(events, "anomaly")
    assert a["iter"] == 5 and a["kind"] == "nonfinite_loss" and a["action"] == "skipped_step"
    losses = step_losses(events)
    assert losses[5] is None  # NaN is written as null
    assert all(math.isfinite(v) for k, v in losses.items() if k != 5)
    assert of_type(events, "state")[-1]["state"] == "done"


class StopWhenPaused(RunOwner):
    """A run owner whose control channel says `stop` as soon as the loop has paused the run."""

    def __init__(self, run):
        super().__init__(run)
        self.stops = 0
        self.paused = False

    def emit(self, type, **fields):
        if type == "state" and fields["state"] == "paused":
            self.paused = True
        return super().emit(type, **fields)

    def requests(self):
        if self.paused and not self.stops:
            self.stops += 1
            return [{"id": "s", "cmd": "stop"}]
        return []


def test_repeated_nonfinite_steps_pause_the_run(corpus, monkeypatch):
    from gpt2_cockpit.engine.runs.events import read_all
    from gpt2_cockpit.engine.runs.launch import create_run
    from gpt2_cockpit.engine.train.loop import train

    monkeypatch.setenv("GPT2_COCKPIT_FAKE_NAN_AT_ITER", "3")
    faults.reset()
    run = create_run("cpu-tiny", tiny_overrides(corpus) + ["train.max_bad_steps=1"], "p")
    cfg = run.config()
    owner = StopWhenPaused(run)
    assert train(Stepper(cfg, PretrainWorkload(cfg), "cpu"), owner) == "stopped"
    owner.close()
    assert owner.stops == 1  # the loop stayed paused until told to stop

    ev = read_all(run.events_path)
    paused = [e for e in of_type(ev, "state") if e["state"] == "paused"]
    assert len(paused) == 1 and "learning_rate" in paused[0]["reason"]
    (anomaly,) = of_type(ev, "anomaly")
    assert anomaly["action"] == "paused" and anomaly["iter"] == 3
    assert max(step_losses(ev)) == 3  # no step was taken while paused
    assert [e["state"] for e in of_type(ev, "state")][-2:] == ["stopping", "stopped"]
    # no checkpoint of bad weights: the stop after the skipped step writes none
    assert ckpt.listing(run.checkpoints) == []


def test_run_writes_periodic_gpu_events(corpus, monkeypatch):
    from gpt2_cockpit.engine.machine import gpustats
    from gpt2_cockpit.engine.train import owner

    class FakeSampler:
        def sample(self):
            return [{"index": 0, "name": "NVIDIA GeForce RTX 4070 Ti", "util": 97, "mem_used": 9 * 2**30,
                     "mem_total": 12 * 2**30, "temp": 66, "power": None}]

    monkeypatch.setattr(gpustats.GpuSampler, "create", classmethod(lambda cls, *a, **k: FakeSampler()))
    monkeypatch.setattr(owner, "GPU_SAMPLE_SECONDS", 0.05)
    monkeypatch.setattr(owner, "HEARTBEAT_SECONDS", 0.05)
    _, code, events = run_inprocess(corpus, "g", max_iters=40, eval_interval=0)
    gpu = of_type(events, "gpu")
    assert code == 0 and len(gpu) >= 2
    assert gpu[0]["util"] == 97 and gpu[0]["power"] is None and gpu[0]["name"].endswith("4070 Ti")


def test_no_gpu_means_no_gpu_events_and_no_error(corpus):
    _, code, events = run_inprocess(corpus, "n", max_iters=5)
    assert code == 0 and not of_type(events, "gpu") and not of_type(events, "error")


def test_a_loss_spike_is_an_anomaly_event(corpus, monkeypatch):
    monkeypatch.setenv("GPT2_COCKPIT_FAKE_SPIKE_AT_ITER", "30")
    faults.reset()
    _, code, events = run_inprocess(corpus, "spike", max_iters=34, eval_interval=0)
    assert code == 0
    spikes = [a for a in of_type(events, "anomaly") if a["iter"] == 30]
    assert {a["kind"] for a in spikes} == {"loss_spike", "grad_spike"}  # 20x the loss: 20x the gradients too
    assert all(a["action"] == "none" and a["zscore"] > 6 for a in spikes)
    assert [a["iter"] for a in of_type(events, "anomaly") if a["kind"] == "loss_spike"] == [30]
    loss_spike = next(a for a in spikes if a["kind"] == "loss_spike")
    assert loss_spike["value"] == step_losses(events)[30]
    assert of_type(events, "state")[-1]["state"] == "done"


def test_skip_spikes_leaves_the_weights_of_a_spike_step_alone(corpus, monkeypatch):
    monkeypatch.setenv("GPT2_COCKPIT_FAKE_SPIKE_AT_ITER", "25")
    faults.reset()
    cfg = presets.load("cpu-tiny", tiny_overrides(corpus) + ["train.skip_spikes=true"])
    stepper = Stepper(cfg, PretrainWorkload(cfg), "cpu")
    for k in range(24):
        assert stepper.step(k, 1e-3).applied
    before = {n: p.clone() for n, p in stepper.raw_model.named_parameters()}
    result = stepper.step(24, 1e-3)
    assert not result.applied and not result.nonfinite and {s.kind for s in result.spikes} == {"loss_spike", "grad_spike"}
    assert all(torch.equal(p, before[n]) for n, p in stepper.raw_model.named_parameters())
    assert stepper.step(25, 1e-3).applied  # the next step trains as usual
