"""The training loop's side of the control channel, without sockets: a scripted run owner hands
the loop commands at chosen iterations and records every answer and event."""

import time

import pytest

from conftest import tiny_overrides
from gpt2_cockpit.engine import presets, sampling
from gpt2_cockpit.engine.errors import UserError
from gpt2_cockpit.engine.runs.events import read_all
from gpt2_cockpit.engine.runs.launch import create_run
from gpt2_cockpit.engine.train.loop import train
from gpt2_cockpit.engine.train.owner import RunOwner
from gpt2_cockpit.engine.train.pretrain import PretrainWorkload
from gpt2_cockpit.engine.train.step import Generation, Stepper, lr_at
from helpers import of_type, step_losses


class ScriptedOwner(RunOwner):
    """Gives the loop `script[k]` (a list of commands) once its last event was step k, or, for
    the key "paused", once the run has paused; records answers with the number of events logged
    by then."""

    def __init__(self, run, script):
        super().__init__(run)
        self.script = dict(script)
        self.answers = {}
        self.logged = []
        self._ids = iter(range(10_000))

    def emit(self, type, **fields):
        event = super().emit(type, **fields)
        self.logged.append(event)
        return event

    def requests(self):
        last_step = max((e["iter"] for e in self.logged if e["type"] == "step"), default=0)
        states = [e["state"] for e in self.logged if e["type"] == "state"]
        key = "paused" if states and states[-1] == "paused" and "paused" in self.script else last_step
        return [{"id": f"{cmd['cmd']}-{next(self._ids)}", **cmd} for cmd in self.script.pop(key, [])]

    def answer(self, cid, error=None):
        self.answers.setdefault(cid, (error, len(self.logged)))  # the first answer counts


def start(corpus, name, script, **train_kw):
    run = create_run("cpu-tiny", tiny_overrides(corpus, **train_kw), name)
    cfg = run.config()
    owner = ScriptedOwner(run, script)
    return run, owner, Stepper(cfg, PretrainWorkload(cfg), "cpu")


def answer_of(owner, cmd):
    (found,) = [v for k, v in owner.answers.items() if k.startswith(cmd + "-")]
    return found


def test_commands_are_applied_between_steps_and_answered_after_their_events(corpus):
    script = {
        3: [{"cmd": "pause"}],
        "paused": [
            {"cmd": "set", "key": "train.learning_rate", "value": 2e-4},
            {"cmd": "sample", "prompt": "The ", "max_new_tokens": 12, "temperature": 0.8, "top_k": 5,
             "request_id": "r1"},
            {"cmd": "checkpoint"},
            {"cmd": "resume"},
        ],
    }
    run, owner, stepper = start(corpus, "c", script, max_iters=8)
    assert train(stepper, owner) == "done"
    owner.close()
    events = read_all(run.events_path)

    for cmd in ("pause", "set", "sample", "checkpoint", "resume"):
        assert answer_of(owner, cmd)[0] is None, cmd  # accepted
    # pause, set, checkpoint and resume are answered once their events are in the log
    pause_event = next(i for i, e in enumerate(owner.logged) if e["type"] == "state" and e["state"] == "paused")
    assert answer_of(owner, "pause")[1] == pause_event + 1
    set_event = next(i for i, e in enumerate(owner.logged) if e["type"] == "set")
    assert answer_of(owner, "set")[1] == set_event + 1
    ckpt_event = next(i for i, e in enumerate(owner.logged) if e["type"] == "checkpoint" and e["iter"] == 3)
    assert answer_of(owner, "checkpoint")[1] == ckpt_event + 1
    # a sample is answered when accepted, before the text: the text follows as an event
    sample_event = next(i for i, e in enumerate(owner.logged) if e["type"] == "sample")
    assert answer_of(owner, "sample")[1] <= sample_event

    (s,) = of_type(events, "sample")
    assert s["request_id"] == "r1" and s["iter"] == 3 and s["text"].startswith("The ") and len(s["text"]) > 4
    (st,) = of_type(events, "set")
    assert (st["key"], st["new"]) == ("train.learning_rate", 2e-4)
    assert run.config().train.learning_rate == 2e-4  # config.toml follows the live setting
    t = stepper.cfg.train
    assert t.learning_rate == 2e-4  # steps after the set follow the new schedule
    assert [e["lr"] for e in of_type(events, "step") if e["iter"] > 3] == [lr_at(k, t) for k in range(3, 8)]
    assert of_type(events, "step")[2]["lr"] != lr_at(2, t)
    assert sorted(step_losses(events)) == list(range(1, 9))  # every step once, none during the pause
    states = [e["state"] for e in of_type(events, "state")]
    assert states == ["running", "paused", "running", "stopping", "done"], [(e["state"], e.get("reason")) for e in of_type(events, "state")]


def test_refused_commands_say_why_and_change_nothing(corpus):
    script = {2: [
        {"cmd": "sample", "prompt": "x", "max_new_tokens": 10, "temperature": 0, "top_k": 5, "request_id": "bad"},
        {"cmd": "sample", "prompt": "x", "max_new_tokens": 0, "request_id": "bad2"},
        {"cmd": "set", "key": "model.n_layer", "value": 3},
        {"cmd": "set", "key": "train.learning_rate", "value": "fast"},
        {"cmd": "launch"},
    ]}
    run, owner, stepper = start(corpus, "r", script, max_iters=4)
    assert train(stepper, owner) == "done"
    owner.close()
    errors = {k: v[0] for k, v in owner.answers.items()}
    assert all(errors.values()), errors  # every one refused, each with a sentence
    assert any("temperature" in e for e in errors.values()) and any("max_new_tokens" in e for e in errors.values())
    assert any("cannot change during a run" in e for e in errors.values())
    assert any("unknown command" in e for e in errors.values())
    events = read_all(run.events_path)
    assert not of_type(events, "sample") and not of_type(events, "set")
    preset = presets.load("cpu-tiny", tiny_overrides(corpus, max_iters=4))  # what the run started with
    assert run.config().model.n_layer == preset.model.n_layer == 2
    assert run.config().train.learning_rate == stepper.cfg.train.learning_rate == preset.train.learning_rate


def test_a_failed_sample_is_an_error_event_with_its_request_id_and_the_run_goes_on(corpus, monkeypatch):
    script = {2: [{"cmd": "sample", "prompt": "The", "max_new_tokens": 5, "request_id": "q"}]}
    run, owner, stepper = start(corpus, "f", script, max_iters=4)

    def out_of_memory(self, seconds):
        raise UserError("sampling ran out of GPU memory; try fewer max_new_tokens")

    monkeypatch.setattr(Generation, "advance", out_of_memory)
    assert train(stepper, owner) == "done"
    owner.close()
    events = read_all(run.events_path)
    (err,) = of_type(events, "error")
    assert err["request_id"] == "q" and "out of GPU memory" in err["message"]
    assert answer_of(owner, "sample")[0] is None  # it was accepted; the failure is in the log
    assert max(step_losses(events)) == 4


def test_stop_checkpoints_the_current_step_and_answers_after_stopping(corpus):
    run, owner, stepper = start(corpus, "s", {5: [{"cmd": "stop"}]}, max_iters=100, checkpoint_interval=0)
    assert train(stepper, owner) == "stopped"
    owner.close()
    events = read_all(run.events_path)
    assert max(step_losses(events)) == 5
    assert [e["iter"] for e in of_type(events, "checkpoint")] == [5]
    assert [e["state"] for e in of_type(events, "state")][-2:] == ["stopping", "stopped"]
    stopping = next(i for i, e in enumerate(owner.logged) if e["type"] == "state" and e["state"] == "stopping")
    assert answer_of(owner, "stop") == (None, stopping + 1)


def test_a_long_sample_never_holds_the_run(corpus):
    # the largest sample allowed is generated a slice at a time: training goes on, pause and
    # cancel are taken at the next step, and nothing waits for the sample to finish
    script = {
        2: [{"cmd": "sample", "prompt": "The ", "max_new_tokens": sampling.MAX_NEW_TOKENS_LIMIT, "request_id": "long"}],
        6: [{"cmd": "pause"}],
        "paused": [{"cmd": "cancel", "request_id": "long"}, {"cmd": "cancel", "request_id": "nope"},
                   {"cmd": "resume"}],
    }
    run, owner, stepper = start(corpus, "long", script, max_iters=10)
    t0 = time.monotonic()
    assert train(stepper, owner) == "done"
    owner.close()
    assert time.monotonic() - t0 < 60  # 20,000 tokens would take minutes on this CPU
    events = read_all(run.events_path)
    assert answer_of(owner, "sample")[0] is None and answer_of(owner, "pause")[0] is None
    cancels = sorted(v[0] or "" for k, v in owner.answers.items() if k.startswith("cancel-"))
    assert cancels[0] == "" and "no sample 'nope'" in cancels[1]
    assert sorted(step_losses(events)) == list(range(1, 11))  # steps 3-6 ran while it was sampling
    assert not of_type(events, "error")
    (cancelled,) = of_type(events, "sample")  # what was generated until then, marked cancelled
    assert cancelled["request_id"] == "long" and cancelled["cancelled"] is True
    assert cancelled["iter"] == 2 and cancelled["text"].startswith("The ") and len(cancelled["text"]) > 4


def test_sample_bounds_are_one_sentence_each(corpus):
    with pytest.raises(UserError, match="max_new_tokens 100000000: needs a whole number from 1 to 20,000"):
        sampling.check(100_000_000, 0.8, 200)
    with pytest.raises(UserError, match="the prompt is 200000 characters; at most 100,000 are taken"):
        sampling.check(10, 0.8, 200, "x" * 200_000)
    script = {1: [{"cmd": "sample", "prompt": "The quick cat sat on it", "max_new_tokens": 5, "request_id": "p"}]}
    run, owner, stepper = start(corpus, "b", script, max_iters=2)  # the tiny model's context is 16 tokens
    assert train(stepper, owner) == "done"
    owner.close()
    error = answer_of(owner, "sample")[0]
    assert error == "the prompt is 23 tokens and the model's context window is 16; shorten the prompt"
