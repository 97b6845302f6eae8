"""Issue #18, tried as a new user would: the lr schedule follows a shortened run, exported
weights are readable like the rest of the folder, `compare` says when a key changed during a run
and compares the newest runs when none is named, and a resume with nothing to resume from says
so once."""

from __future__ import annotations

import json
import os
import stat
import sys
import types

import pytest
from fakerun import run_app, wait_for
from helpers import run_inprocess

from gpt2_cockpit.cli.main import main
from gpt2_cockpit.engine import config as cfgmod
from gpt2_cockpit.engine import presets
from gpt2_cockpit.engine.errors import UserError
from gpt2_cockpit.engine.machine.planner import plan_run
from gpt2_cockpit.engine.runs import launch, metrics
from gpt2_cockpit.engine.runs.rundir import create

NO_DOCTOR = [sys.executable, "-c", "print('[]')"]
T0 = 1_700_000_000.0


# --------------------------------------------------------------------------- the lr schedule


def test_shipped_presets_decay_over_the_run_however_long_it_is():
    for name in ("cpu-tiny", "shakespeare-char", "gpt2-124m", "gpt2-40m-12gb", "gpt2-finetune"):
        assert presets.load(name).train.lr_decay_iters == "auto", name
    t = presets.load("cpu-tiny", ["train.max_iters=300"]).train
    assert t.decay_end == 300
    assert t.lr_at(299) == pytest.approx(t.min_lr, rel=1e-3)  # the last step is annealed
    assert t.lr_at(300) == t.min_lr


def test_an_explicit_decay_still_wins_and_the_torch_step_uses_the_same_schedule():
    from gpt2_cockpit.engine.train.step import lr_at

    t = presets.load("cpu-tiny", ["train.max_iters=300", "train.lr_decay_iters=2000"]).train
    assert t.decay_end == 2000
    assert lr_at(299, t) == t.lr_at(299) == pytest.approx(9.76e-4, rel=1e-3)  # 98% of the peak


def test_a_live_max_iters_moves_an_auto_decay_but_not_an_explicit_one():
    """`set train.max_iters` replaces the run's config (loop.handle_commands: with_overrides),
    and the schedule reads max_iters at every step."""
    auto = presets.load("cpu-tiny", ["train.max_iters=300"])
    longer = cfgmod.with_overrides(auto, {"train.max_iters": 600}, origin="set train.max_iters").train
    assert longer.decay_end == 600 and longer.lr_at(299) > 5 * auto.train.lr_at(299)
    fixed = presets.load("cpu-tiny", ["train.max_iters=300", "train.lr_decay_iters=300"])
    assert cfgmod.with_overrides(fixed, {"train.max_iters": 600}).train.decay_end == 300


@pytest.mark.parametrize("value, why", [('"soon"', "expected an integer or \"auto\", got 'soon'"),
                                        ("true", 'expected an integer or "auto", got True'),
                                        ("1.5", 'expected an integer or "auto", got 1.5'),
                                        ("-1", "= -1 must not be negative")])
def test_lr_decay_iters_is_an_integer_or_auto_and_a_mistake_names_file_and_key(tmp_path, value, why):
    path = tmp_path / "mine.toml"
    path.write_text(f'name = "mine"\n[train]\nlr_decay_iters = {value}\n')
    with pytest.raises(UserError) as e:
        cfgmod.load(path)
    assert str(e.value).startswith(f"{path}: train.lr_decay_iters") and why in str(e.value)


def test_auto_survives_config_toml_so_a_resumed_run_keeps_following_max_iters(tmp_path):
    cfg = presets.load("cpu-tiny")
    cfgmod.save(cfg, tmp_path / "config.toml")
    assert 'lr_decay_iters = "auto"' in (tmp_path / "config.toml").read_text()
    assert cfgmod.load(tmp_path / "config.toml").train.lr_decay_iters == "auto"


def test_plan_says_when_the_schedule_does_not_end_within_the_run():
    short = plan_run(presets.load("cpu-tiny", ["train.max_iters=300", "train.lr_decay_iters=2000"]), gpu=None)
    (note,) = [n for n in short.notes if "lr schedule" in n]
    assert "train.lr_decay_iters = 2,000 is past max_iters = 300" in note and "98% of the peak" in note
    assert ("note", note) in short.rows() and note in short.to_dict()["notes"]
    for fine in (["train.max_iters=300"], ["train.max_iters=300", "train.lr_decay_iters=200"]):
        assert not any("lr schedule" in n for n in plan_run(presets.load("cpu-tiny", fine), gpu=None).notes)
    # a finetune by epochs sets its decay to the iterations it derives: nothing to warn about
    ft = presets.load("gpt2-finetune", ["train.lr_decay_iters=5000"])
    assert not any("lr schedule" in n for n in plan_run(ft, gpu=None).notes)


def test_the_preset_editor_shows_the_schedule_warning():
    from gpt2_cockpit.tui.app import make_app
    from gpt2_cockpit.tui.screens.preset_edit import PresetEditScreen, field_id
    from gpt2_cockpit.tui.widgets.plan import PlanPane

    app = make_app("home", doctor_argv=NO_DOCTOR)

    @run_app(app, size=(100, 40))
    async def _(pilot):
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, PresetEditScreen), what="the preset editor")
        form = app.screen
        plan = form.query_one(PlanPane)
        await wait_for(pilot, lambda: "tokens/step" in plan.text, what="the plan")
        assert form.preset_name == "cpu-tiny" and "lr schedule" not in plan.text
        form.query_one(f"#{field_id('train.max_iters')}").value = "300"
        await pilot.pause()
        assert form.cfg.train.max_iters == 300 and form.cfg.train.decay_end == 300
        form.query_one(f"#{field_id('train.lr_decay_iters')}").value = "2000"
        await pilot.pause()
        assert form.cfg.train.lr_decay_iters == 2000
        await wait_for(pilot, lambda: "does not end within the run" in " ".join(plan.text.split()),
                       what="the warning in the plan")
        form.query_one(f"#{field_id('train.lr_decay_iters')}").value = "later"
        await pilot.pause()
        assert form.cfg is None and "expected an integer or \"auto\"" in str(form.query_one("#edit-error").render())


def test_a_finetune_by_epochs_keeps_auto_and_replaces_a_number_with_its_iterations():
    from gpt2_cockpit.engine.train.finetune import FinetuneWorkload, rows_per_step

    for decay, expect in (("auto", "auto"), (1000, None)):
        cfg = presets.load("gpt2-finetune", [f"train.lr_decay_iters={json.dumps(decay)}"])
        fake = types.SimpleNamespace(cfg=cfg, train_blocks=160)
        FinetuneWorkload._resolve_epochs(fake, lambda message: None)
        t = cfg.train
        assert t.max_iters == 3 * 160 // rows_per_step(cfg) == 30 and t.epochs == 0
        assert t.lr_decay_iters == (expect or 30) and t.decay_end == 30


# --------------------------------------------------------------------------- export


def test_exported_weights_are_readable_like_the_other_files(corpus, tmp_path):
    from gpt2_cockpit.engine.train.export import export_run

    run, code, _ = run_inprocess(corpus, "r", max_iters=2, checkpoint_interval=2, eval_interval=0)
    assert code == 0
    old = os.umask(0o022)
    try:
        export_run(run, tmp_path / "hf")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "hf").iterdir()}
    assert "model.safetensors" in modes and "config.json" in modes
    assert set(modes.values()) == {0o644}, modes


def test_an_exported_finetune_folder_gets_plain_modes_too(tmp_path):
    """A finetune export copies model/ (save_pretrained's 0600 weights among it) through install()."""
    from gpt2_cockpit.engine.train.export import install

    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "model.safetensors").write_bytes(b"x")
    (staged / "model.safetensors").chmod(0o600)
    (staged / "config.json").write_text("{}")
    old = os.umask(0o022)
    try:
        install(staged, tmp_path / "out")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out" / "model.safetensors").stat().st_mode) == 0o644


# --------------------------------------------------------------------------- compare


def ev(type, t, **fields):
    return {"type": type, "time": T0 + t, **fields}


def log_run(name, events, *overrides, mtime=None):
    run = create(presets.load("cpu-tiny", list(overrides)), name)
    with open(run.events_path, "w") as f:
        for e in events:
            f.write(json.dumps(e) + "\n")
    if mtime is not None:
        os.utime(run.config_path, (mtime, mtime))
    return run


def started(t, lr, resumed_from=None, micro_batch=12, grad_accum=1):
    config = {"name": "cpu-tiny", "train": {"learning_rate": lr, "micro_batch": micro_batch, "grad_accum": grad_accum}}
    return [ev("run", t, name="r", preset="cpu-tiny", engine="pretrain", config=config, device="cpu",
               world_size=1, resumed_from=resumed_from),
            ev("state", t + 1, state="running", reason="")]


def steps(t, first, last, every=10):
    return [ev("step", t + k, iter=it, loss=3.0 - it / 100, lr=1e-3, tokens=it * 768, tokens_per_sec=1000.0,
               ms=10.0, mfu=None, micro_batch=12, grad_accum=1, grad_norm=1.0)
            for k, it in enumerate(range(first, last + 1, every))]


def done(t):
    return [ev("state", t, state="done", reason="max_iters reached")]


@pytest.fixture
def lowered_live():
    """Two runs that end at lr 3e-4: one had it from the start, one was lowered live after 70 steps
    (as loop.py logs a `set`: no iter; config.toml keeps the new value)."""
    kept = log_run("kept", started(0, 3e-4) + steps(2, 10, 100) + done(20), "train.learning_rate=3e-4")
    lowered = log_run("lowered", started(0, 1e-3) + steps(2, 10, 70)
                      + [ev("set", 10, key="train.learning_rate", old=0.001, new=0.0003)]
                      + steps(11, 80, 100) + done(20), "train.learning_rate=3e-4")
    return kept, lowered


def test_compare_says_a_learning_rate_changed_live_and_when(lowered_live, capsys):
    assert main(["compare", "kept", "lowered"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("train.learning_rate"))
    assert row.split() == ["train.learning_rate", "0.0003", "0.001", "→", "0.0003", "@70"]
    assert "changed during the run" in out
    assert main(["compare", "kept", "lowered", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "train.learning_rate" in data["differ"]
    assert data["runs"][1]["changes"] == [{"key": "train.learning_rate", "old": 0.001, "new": 0.0003, "iter": 70,
                                           "how": "set"}]
    assert data["runs"][0]["changes"] == []


def test_config_changes_from_oom_splits_restarts_and_superseded_sets():
    events = (started(0, 1e-3) + steps(2, 10, 40)
              + [ev("oom", 7, iter=40, micro_batch_before=12, micro_batch_after=6, grad_accum_after=2)]
              + steps(8, 50, 80)
              + [ev("set", 12, key="train.learning_rate", old=0.001, new=0.0005, iter=75)]  # a log that has iter
              + started(20, 2e-4, resumed_from=60, micro_batch=6, grad_accum=2)  # resume --set lr=2e-4 from 60
              + steps(22, 70, 90))
    changes = metrics.config_changes(events)
    assert [(c.key, c.old, c.new, c.iter, c.how) for c in changes] == [
        ("train.micro_batch", 12, 6, 40, "oom"),
        ("train.grad_accum", 1, 2, 40, "oom"),
        ("train.learning_rate", 0.001, 0.0005, 60, "set"),  # superseded by the restart at 60: from 60 on
        ("train.learning_rate", 0.0005, 0.0002, 60, "resume"),
    ]
    assert metrics.value_history(6, changes, "train.micro_batch") == "12 → 6 @40 (oom)"
    assert metrics.value_history(0.0002, changes, "train.learning_rate") == "0.001 → 0.0005 @60 → 0.0002 @60 (resume)"
    assert metrics.value_history(0.1, changes, "train.weight_decay") == "0.1"


def test_the_compare_screen_shows_the_change_too(lowered_live):
    from gpt2_cockpit.tui.app import make_app
    from gpt2_cockpit.tui.screens.compare import CompareScreen

    kept, lowered = lowered_live
    app = make_app("compare", runs=[str(kept.path), str(lowered.path)], doctor_argv=NO_DOCTOR)

    @run_app(app, size=(100, 30))
    async def _(pilot):
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        await wait_for(pilot, lambda: screen.runs, what="the runs")
        assert dict(screen.rows())["train.learning_rate"] == ["0.0003", "0.001 → 0.0003 @70"]


def test_compare_keeps_a_sets_iteration_when_it_decodes_few_steps():
    """`compare` and the compare screen decode few of a long log's steps (LogFold): a `set` logged
    without its iteration still took effect after the step before it."""
    from gpt2_cockpit.engine.runs.events import LogReader

    events = started(0, 1e-3) + steps(2, 10, 700) + [ev("set", 80, key="train.learning_rate", old=0.001,
                                                        new=0.0003)] + steps(81, 710, 1500)
    run = log_run("r", events)
    for chunk_bytes in (512, 8 << 20):  # batches, as the log reader hands them over
        thin = metrics.LogFold(every_step=False)
        for batch in LogReader(run.events_path, chunk_bytes=chunk_bytes).batches():
            thin.add(batch)
        assert [(c.key, c.iter) for c in thin.changes] == [("train.learning_rate", 700)]
    assert len(thin.rows.steps) <= 2 * (metrics.RECENT_STEPS + 1) < 150  # of 150 steps


def test_compare_with_no_runs_named_compares_the_two_newest(capsys):
    log_run("oldest", started(0, 1e-3) + steps(2, 10, 30) + done(5), mtime=T0)
    log_run("middle", started(0, 2e-3) + steps(2, 10, 30) + done(5), "train.learning_rate=2e-3", mtime=T0 + 10)
    log_run("newest", started(0, 3e-3) + steps(2, 10, 30) + done(5), "train.learning_rate=3e-3", mtime=T0 + 20)
    assert main(["compare"]) == 0
    out, err = capsys.readouterr()
    assert err.startswith("comparing the two newest runs, newest and middle")
    names = [line.split()[0] for line in out.splitlines()[1:3]]
    assert names == ["newest", "middle"] and "oldest" not in out


def test_compare_with_too_few_runs_says_what_to_give(capsys):
    assert main(["compare"]) == 2
    assert capsys.readouterr().err == ("gpt2-cockpit: compare needs two runs and there are no runs yet "
                                       "(give run names: gpt2-cockpit compare RUN RUN...)\n")
    log_run("only", started(0, 1e-3) + done(5))
    assert main(["compare"]) == 2
    assert "there is only only" in capsys.readouterr().err
    assert main(["compare", "only"]) == 2
    assert capsys.readouterr().err == "gpt2-cockpit: compare needs at least two runs (see 'gpt2-cockpit runs')\n"


# --------------------------------------------------------------------------- resume without a checkpoint


def test_resume_without_a_checkpoint_says_so_once_and_starts_nothing(corpus, capsys):
    run = launch.create_run("cpu-tiny", ["train.max_iters=5", f'data.source="{corpus}"'], "early")
    run.events_path.write_text(json.dumps(ev("state", 0, state="stopped", reason="stopped by user")) + "\n")
    before = run.events_path.read_text()
    for how in (["--headless"], ["--detach"], []):
        assert main(["resume", "early", *how]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and err.startswith("gpt2-cockpit: run early has no checkpoint")
    assert run.events_path.read_text() == before and not run.pid_path.exists()


def test_a_headless_run_that_fails_tells_its_error_once(corpus, capsys):
    """The run's own process (what a resume reached before it checked): stderr's sentence, and
    the headless printer echoes neither the error event nor the failed state's reason."""
    from gpt2_cockpit.engine.train import runner

    run = launch.create_run("cpu-tiny", ["train.max_iters=5", f'data.source="{corpus}"'], "early")
    assert runner.run_process(run.path, resume=True, headless=True) == 2
    out, err = capsys.readouterr()
    assert (out + err).count("no checkpoint in") == 1 and err.startswith("gpt2-cockpit: no checkpoint in")
    events = [json.loads(line) for line in run.events_path.read_text().splitlines()]
    assert [e["state"] for e in events if e["type"] == "state"][-1] == "failed"  # the log still says why
    assert any(e["type"] == "error" and "no checkpoint in" in e["message"] for e in events)
