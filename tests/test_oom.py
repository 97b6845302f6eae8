"""OOM auto-adjust: a fake budget raises a real torch.OutOfMemoryError on CPU."""

import pytest
import torch


from gpt2_cockpit.engine import faults
from gpt2_cockpit.engine import presets
from gpt2_cockpit.engine.errors import UserError
from gpt2_cockpit.engine.runs.rundir import resolve
from gpt2_cockpit.engine.train.pretrain import PretrainWorkload
from gpt2_cockpit.engine.train.step import Stepper, install_fault_injection
from conftest import tiny_overrides
from helpers import of_type, run_inprocess, step_losses


def test_fake_oom_raises_the_real_error_type(monkeypatch, corpus):
    monkeypatch.setenv("GPT2_COCKPIT_FAKE_OOM_TOKENS", "10")
    faults.reset()
    model = torch.nn.Embedding(5, 2)
    install_fault_injection(model)
    model(torch.zeros(10, dtype=torch.long))
    with pytest.raises(torch.OutOfMemoryError):
        model(torch.zeros(11, dtype=torch.long))


def test_oom_halves_micro_batch_keeps_tokens_and_matches_smaller_split(monkeypatch, corpus):
    _, _, ref = run_inprocess(corpus, "ref", micro_batch=2, grad_accum=4, max_iters=12)
    monkeypatch.setenv("GPT2_COCKPIT_FAKE_OOM_TOKENS", "32")  # 4 x 16 = 64 tokens do not fit, 2 x 16 do
    faults.reset()
    run, code, events = run_inprocess(corpus, "oom", micro_batch=4, grad_accum=2, max_iters=12)
    assert code == 0 and of_type(events, "state")[-1]["state"] == "done"
    (oom,) = of_type(events, "oom")
    assert oom == {**oom, "iter": 1, "micro_batch_before": 4, "micro_batch_after": 2, "grad_accum_after": 4}
    steps = of_type(events, "step")
    assert len(steps) == 12  # no step lost or done twice
    assert all(s["micro_batch"] * s["grad_accum"] == 8 for s in steps)
    assert [s["tokens"] for s in steps] == [i * 8 * 16 for i in range(1, 13)]
    got, want = step_losses(events), step_losses(ref)
    for i in want:
        assert got[i] == pytest.approx(want[i], abs=1e-6)
    cfg = resolve("oom").config()  # a resume keeps the smaller micro-batch
    assert (cfg.train.micro_batch, cfg.train.grad_accum) == (2, 4)


def test_oom_mid_run_redoes_the_same_step(monkeypatch, corpus):
    # five steps fit; then (on the same run, resumed) the budget only admits micro-batch 1, so
    # step 6 runs out of memory twice and is redone from its first micro-batch each time
    _, _, ref = run_inprocess(corpus, "ref", micro_batch=1, grad_accum=8, max_iters=8)
    _, code, first = run_inprocess(corpus, "oom", micro_batch=4, grad_accum=2, max_iters=5)
    assert code == 0 and not of_type(first, "oom")
    monkeypatch.setenv("GPT2_COCKPIT_FAKE_OOM_TOKENS", "16")
    faults.reset()
    _, code, events = run_inprocess(corpus, "oom", ["train.max_iters=8"], resume=True)
    assert code == 0
    ooms = of_type(events, "oom")
    assert [(o["iter"], o["micro_batch_before"], o["micro_batch_after"], o["grad_accum_after"]) for o in ooms] == \
           [(6, 4, 2, 4), (6, 2, 1, 8)]
    steps = [e["iter"] for e in of_type(events, "step")]
    assert steps == list(range(1, 9))  # step 6 once, none lost (1-5 before the restart)
    got, want = step_losses(events), step_losses(ref)
    assert got.keys() == want.keys()
    for i in want:
        assert got[i] == pytest.approx(want[i], abs=1e-6)


@pytest.mark.parametrize("micro_batch, grad_accum, budget, after", [
    (3, 4, 40, (1, 12)),  # 3 x 16 = 48 > 40: half of 3 is 1, which divides the 12 rows
    (9, 2, 100, (3, 6)),  # 9 x 16 = 144 > 100: half of 9 is 4, which does not divide 18 rows; 3 does
])
def test_odd_micro_batch_keeps_rows_exact(monkeypatch, corpus, micro_batch, grad_accum, budget, after):
    # Stepper._resplit's promise: the largest micro-batch, at most half the one that ran out of
    # memory, that divides the step's rows (so every step keeps exactly its rows and tokens)
    rows = micro_batch * grad_accum
    largest = max(m for m in range(1, micro_batch // 2 + 1) if rows % m == 0)
    assert (largest, rows // largest) == after
    monkeypatch.setenv("GPT2_COCKPIT_FAKE_OOM_TOKENS", str(budget))
    faults.reset()
    _, code, events = run_inprocess(corpus, "odd", micro_batch=micro_batch, grad_accum=grad_accum, max_iters=3)
    assert code == 0
    (oom,) = of_type(events, "oom")  # once: the smaller micro-batch fits the budget
    assert (oom["iter"], oom["micro_batch_before"], oom["micro_batch_after"], oom["grad_accum_after"]) == \
           (1, micro_batch, *after)
    assert {(s["micro_batch"], s["grad_accum"]) for s in of_type(events, "step")} == {after}


def test_nothing_fits_fails_with_one_sentence(monkeypatch, corpus):
    monkeypatch.setenv("GPT2_COCKPIT_FAKE_OOM_TOKENS", "8")  # less than one block of 16
    faults.reset()
    _, code, events = run_inprocess(corpus, "none", max_iters=3, eval_interval=0)
    assert code == 2
    (err,) = of_type(events, "error")
    assert "micro_batch 1" in err["message"] and "block_size" in err["message"]
    assert of_type(events, "state")[-1]["state"] == "failed"


def test_eval_oom_splits_its_own_batch(monkeypatch, corpus):
    cfg = presets.load("cpu-tiny", tiny_overrides(corpus))
    stepper = Stepper(cfg, PretrainWorkload(cfg), "cpu")
    x, y = stepper.workload.sample_batch("val", 8, torch.Generator().manual_seed(0), None)
    whole = stepper._eval_batch(x, y)
    monkeypatch.setenv("GPT2_COCKPIT_FAKE_OOM_TOKENS", "32")
    faults.reset()
    install_fault_injection(stepper.raw_model)
    stepper.raw_model.eval()
    assert stepper._eval_batch(x, y) == pytest.approx(whole, abs=1e-5)


def test_sampling_oom_is_reported_not_fatal(monkeypatch, corpus):
    monkeypatch.setenv("GPT2_COCKPIT_FAKE_OOM_TOKENS", "5")
    faults.reset()
    cfg = presets.load("cpu-tiny", tiny_overrides(corpus))
    stepper = Stepper(cfg, PretrainWorkload(cfg), "cpu")
    with pytest.raises(UserError, match="sampling ran out of GPU memory"):
        stepper.generate("The cat", 5, 1.0, 0, seed=1)  # 7 tokens: more than the budget
    assert stepper.raw_model.training  # back in training mode
