"""Training while the corpus is still being prepared: shards in order, each shuffled (engine/data/stream.py)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import CLI, TINY_TEXT, cli_env, tiny_overrides
from gpt2_cockpit.engine import faults
from gpt2_cockpit.engine.data import prepare as prep
from gpt2_cockpit.engine.data.stream import ShardStream
from gpt2_cockpit.engine.runs.events import read_all
from gpt2_cockpit.engine.runs.rundir import RunDir
from helpers import finds_its_disk_full, wait_until

SHARD = 500  # char tokens per shard: the tiny corpus makes about 20 of them
T = 16


def _prepared(corpus: Path) -> Path:
    return prep.prepare_tokens(str(corpus), "char", 0.1, shard_tokens=SHARD, workers=1)


def test_each_epoch_reads_every_window_of_every_shard_once(corpus):
    folder = _prepared(corpus)
    s = ShardStream(folder, T, seed=1)
    assert s.complete and len(s.units) > 10
    total = s.cum[-1]
    first = [s._locate(g) for g in range(total)]
    expected = {(u, j * T) for u in range(len(s.units)) for j in range(s._windows(u))}
    assert sorted(first) == sorted(expected)
    assert [u for u, _ in first] == sorted(u for u, _ in first)  # shards in order
    second = [s._locate(g) for g in range(total, 2 * total)]
    assert sorted(second) == sorted(expected) and second != first  # reshuffled each epoch
    # a batch is the windows' tokens, the same from any reader with the same seed
    rows = 8
    b = s.batch(3, rows)
    u, start = s._locate(3 * rows)
    assert b.shape == (rows, T + 1)
    assert np.array_equal(b[0], np.asarray(s._array("train", u)[start:start + T + 1], dtype=np.int64))
    assert np.array_equal(ShardStream(folder, T, seed=1).batch(3, rows), b)
    assert not np.array_equal(ShardStream(folder, T, seed=2).batch(3, rows), b)


def test_a_step_waits_for_its_shards_and_the_eval_shards_come_first(corpus):
    folder = _prepared(corpus)
    (folder / "meta.json").unlink()  # as if the preparation were still going on
    s = ShardStream(folder, T, seed=1)
    n = len(s.units)
    evals = s.eval_units["all"]
    assert evals[0] == 0 and evals[-1] == n - 1  # this text's tail (its val split) is the last shard
    keep = set(evals) | {1, 2}  # so: shards 1-3 and the eval shards are done, 4 (index 3) is not
    for i in range(n):
        if i not in keep:
            (folder / f"unit-{i:05d}.json").unlink()
    s = ShardStream(folder, T, seed=1)
    ready = s.cum[-1]
    assert not s.complete and s.missing(ready // 8 - 1, 8) is None
    assert s.missing(ready // 8, 8) == f"waiting for shard {len(s.cum)} of {n}: training is ahead of the data preparation"
    (folder / f"unit-{n - 1:05d}.json").unlink()
    assert ShardStream(folder, T, seed=1).missing(0, 8).startswith("waiting for the evaluation shards")


def test_preparation_order_puts_the_eval_shards_first(corpus):
    files, folder = prep.locate(str(corpus), "char", 0.1, "text", SHARD)
    plan = prep.plan_tokenizing(files, "text", 0.1, "char", SHARD, lambda p: None)
    evals = prep.eval_units(plan, 0.1, SHARD, "char")
    assert evals["val"] == [u["index"] for u in plan["units"] if u.get("tail")]
    assert evals["train"] == [0, 1, 2, 3]  # EVAL_MAX_UNITS of train text


def _train_cli(home: Path, args: list[str], env_extra: dict | None = None) -> subprocess.Popen:
    env = cli_env(home)
    env.update(env_extra or {})
    return subprocess.Popen(CLI + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(path: Path, pred, timeout: float = 120.0) -> list[dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        events = read_all(path) if path.exists() else []
        if pred(events):
            return events
        time.sleep(0.1)
    raise AssertionError(f"timed out; last events: {events[-5:]}")


def test_training_starts_before_preparation_ends_and_a_stop_resume_is_exact(tmp_path):
    """A run whose corpus is prepared slowly trains as soon as its first shards exist, waits when
    it catches up, and, stopped and resumed mid-preparation, trains exactly as a run on data
    prepared beforehand."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TINY_TEXT)
    overrides = tiny_overrides(corpus, max_iters=60, eval_interval=20, checkpoint_interval=4, lr_decay_iters=60)
    overrides += [f"data.shard_tokens={SHARD}", "data.order=\"shards\""]
    sets = [a for o in overrides for a in ("--set", o)]

    # the reference: its data prepared before the run
    ref_home = tmp_path / "ref"
    done = subprocess.run(CLI + ["prepare", "cpu-tiny", *sets], env=cli_env(ref_home), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run(CLI + ["train", "cpu-tiny", *sets, "--name", "ref", "--headless"], env=cli_env(ref_home),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    ref = read_all(ref_home / "runs" / "ref" / "events.jsonl")

    # the same run while its corpus is prepared at 0.4 s a shard, stopped at iter >= 6 and resumed
    home = tmp_path / "live"
    slow = {"GPT2_COCKPIT_FAKE_PREPARE_SECONDS": "0.4"}
    proc = _train_cli(home, ["train", "cpu-tiny", *sets, "--name", "live", "--headless"], slow)
    events_path = home / "runs" / "live" / "events.jsonl"
    events = _wait_for(events_path, lambda es: any(e["type"] == "step" and e["iter"] >= 6 for e in es))
    assert not any(e["type"] == "prepare" and e["phase"] == "done" for e in events)  # trained before the end
    stop = subprocess.run(CLI + ["stop", "live"], env=cli_env(home), capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    events = read_all(events_path)
    assert events[-1]["state"] == "stopped"
    assert not any(e["type"] == "prepare" and e["phase"] == "done" for e in events)  # stopped mid-preparation
    # sampling from the stopped run needs its weights and vocabulary, not the rest of the corpus
    (cache,) = [f for f in (home / "cache" / "tokens").glob("corpus-txt-char-*") if f.is_dir()]
    before = sorted(cache.glob("unit-*.json"))
    sample = subprocess.run(CLI + ["sample", "live", "The", "--max-new-tokens", "20"], env={**cli_env(home), **slow},
                            capture_output=True, text=True, timeout=120)
    assert sample.returncode == 0 and sample.stdout.startswith("The"), sample.stdout + sample.stderr
    assert sorted(cache.glob("unit-*.json")) == before and not (cache / "meta.json").exists()
    # resumed; then the disk fills up (the token cache, the event log, checkpoints): the run
    # pauses and holds its events until there is room, and goes on when resumed
    flag = tmp_path / "disk-full"
    proc = _train_cli(home, ["resume", "live", "--headless"], {**slow, "GPT2_COCKPIT_FAKE_FULL_DISK": str(flag)})
    stopped_at = max(e["iter"] for e in events if e["type"] == "step")
    _wait_for(events_path, lambda es: any(e["type"] == "step" and e["iter"] > stopped_at + 2 for e in es))
    flag.touch()
    wait_until(lambda: finds_its_disk_full(RunDir(home / "runs" / "live")), what="the run to find its disk full")
    refused = subprocess.run(CLI + ["resume", "live"], env=cli_env(home), capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "no space left" in refused.stdout + refused.stderr
    flag.unlink()
    resumed = subprocess.run(CLI + ["resume", "live"], env=cli_env(home), capture_output=True, text=True, timeout=60)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    events = read_all(events_path)
    assert events[-1]["state"] == "done"  # (60 steps need about 15 of the 20 shards: it ends first)
    full = [e for e in events if e["type"] == "error" and "no space left to write" in e["message"]]
    assert full and any(e["type"] == "state" and e["state"] == "paused" for e in events)
    # it caught up with the preparation at least once and waited, saying why
    waits = [e for e in events if e["type"] == "state" and e["state"] == "preparing" and "shard" in e.get("reason", "")]
    assert waits, [e for e in events if e["type"] == "state"]

    def losses(es):
        out = {}
        for e in es:
            if e["type"] == "step":
                out[e["iter"]] = e["loss"]
        return out

    def evals(es):
        return {(e["iter"], split): e[f"{split}_loss"] for e in es if e["type"] == "eval" for split in ("train", "val")}

    # equal up to float summation order (a CPU run's thread count follows the other runs on the box)
    assert losses(events) == pytest.approx(losses(ref), rel=1e-5) and len(losses(ref)) == 60
    assert evals(events) == pytest.approx(evals(ref), rel=1e-5)


def test_a_full_disk_stops_the_background_preparation_and_a_restart_finishes_it(corpus, tmp_path, monkeypatch):
    flag = tmp_path / "disk-full"
    monkeypatch.setenv("GPT2_COCKPIT_FAKE_FULL_DISK", str(flag))
    faults.reset()
    files, folder = prep.locate(str(corpus), "char", 0.1, "text", SHARD)
    full: list[Path] = []
    flag.touch()
    p = prep.Preparation(folder, str(corpus), files, "char", 0.1, "text", workers=1, shard_tokens=SHARD,
                         on_disk_full=full.append)
    assert p.finished.wait(60)
    assert isinstance(p.error, prep.PrepareDiskFull) and full and full[0].parent == folder
    assert "no space left to write" in str(p.error) and "free" in str(p.error)
    assert not list(folder.glob("*.bin")) and not list(folder.glob(".*.tmp"))  # nothing partial left
    flag.unlink()
    p = prep.Preparation(folder, str(corpus), files, "char", 0.1, "text", workers=1, shard_tokens=SHARD)
    assert p.finished.wait(60) and p.error is None
    monkeypatch.setenv("GPT2_COCKPIT_HOME", str(tmp_path / "clean"))
    clean = _prepared(corpus)
    assert sorted(f.name for f in clean.glob("*.bin")) == sorted(f.name for f in folder.glob("*.bin"))
    for f in clean.glob("*.bin"):
        assert f.read_bytes() == (folder / f.name).read_bytes()
