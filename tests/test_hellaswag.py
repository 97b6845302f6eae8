"""HellaSwag (engine/train/hellaswag.py): llm.c's scoring, checked against a brute-force computation with
the model's plain forward pass, in a run, on the command line, offline; all on small files made here."""

from __future__ import annotations

import json
import random
import time
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from gpt2_cockpit.cli import main as cli
from gpt2_cockpit.engine import presets
from gpt2_cockpit.engine.data import tokenizers
from gpt2_cockpit.engine.errors import UserError
from gpt2_cockpit.engine.paths import cache_dir
from gpt2_cockpit.engine.train import hellaswag as hs
from gpt2_cockpit.engine.train.dist import Dist
from conftest import TINY_TEXT
from helpers import export_run, exportable_char_run, of_type, run_inprocess, save_tiny_gpt2

SENTENCES = [f"The {a} {b} sat on the {c}. It was {d}." for a in ("quick", "lazy", "small", "old")
             for b in ("cat", "dog", "fox") for c in ("mat", "log", "hill") for d in ("warm", "cold")]
ENDINGS = ["mat.", "log. It was cold.", "hill. It was warm.", "fox.", "mat. It was warm.",
           "log. It was cold. The lazy dog sat on the hill. It was warm.", "old cat.", "hill."]


def make_items(n: int, seed: int = 0) -> list[dict]:
    """Items in HellaSwag's format: contexts of 0-3 sentences and a half sentence, endings short and long."""
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        lead = " ".join(rng.sample(SENTENCES, rng.randint(0, 3)))
        tail = rng.choice(("On the", "It sat on the", f"The {rng.choice(('quick', 'lazy', 'old'))} cat sat on the"))
        ctx = f"{lead} {tail}".strip()
        items.append({"ctx": ctx, "endings": rng.sample(ENDINGS, 4), "label": rng.randrange(4),
                      "activity_label": "sitting"})  # other fields are ignored, as in HellaSwag's file
    return items


def write_items(path, items) -> str:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return str(path)


@pytest.fixture
def items_file(tmp_path):
    return write_items(tmp_path / "hellaswag.jsonl", make_items(24))


def brute_force(logits_of, encode, window: int, vocab: int | None, item: dict) -> tuple[list[float], list[float]]:
    """One ending at a time, unbatched, unpadded: the context's tokens then those of " " + ending,
    dropped from the left until the row fits the window; loss summed (and averaged) over the
    ending's tokens that are left, each predicted from the token before it."""
    ctx = encode(item["ctx"])
    sums, means = [], []
    for ending in item["endings"]:
        row = ctx + encode(" " + ending)
        first = len(ctx)  # where the ending starts in row
        while len(row) > window:
            row, first = row[1:], first - 1
        first = max(first, 1)
        logits = logits_of(torch.tensor([row]))[0].float()  # (T, V)
        if vocab is not None:
            logits = logits[:, :vocab]
        losses = [F.cross_entropy(logits[j - 1], torch.tensor(row[j])).item() for j in range(first, len(row))]
        sums.append(sum(losses))
        means.append(sum(losses) / len(losses))
    return sums, means


def lowest(values):
    return values.index(min(values))


def check_against_brute_force(model: hs.Model, plain_logits, items: list[dict]) -> hs.Result:
    """Batched scoring equals the brute force, ending by ending; some rows were cut, some not."""
    lengths = [len(model.encode(it["ctx"]) + model.encode(" " + e)) for it in items for e in it["endings"]]
    assert max(lengths) > model.window >= min(lengths)  # both cases are exercised
    torch.manual_seed(3)
    rng = torch.get_rng_state()
    model.module.train()
    result = hs.score(model, hs.encode([hs.Item(it["ctx"], tuple(it["endings"]), it["label"]) for it in items], model))
    assert model.module.training  # the caller's mode is back
    assert torch.equal(torch.get_rng_state(), rng)  # no random numbers drawn
    model.module.eval()
    with torch.no_grad():
        expected = [brute_force(plain_logits, model.encode, model.window, model.vocab, it) for it in items]
    for (sums, means), (want_sums, want_means) in zip(result.losses, expected):
        assert sums == pytest.approx(want_sums, rel=1e-4, abs=1e-4)
        assert means == pytest.approx(want_means, rel=1e-4, abs=1e-4)
    right = sum(lowest(s) == it["label"] for (s, _), it in zip(expected, items))
    right_norm = sum(lowest(m) == it["label"] for (_, m), it in zip(expected, items))
    assert (result.n, result.correct, result.correct_norm) == (len(items), right, right_norm)
    assert result.acc == right / len(items) and result.acc_norm == right_norm / len(items)
    return result


def eval_json(capsys, *args) -> dict:
    capsys.readouterr()  # what came before (a run's progress lines)
    assert cli.main(["eval", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def same_scores(a: dict, b: dict) -> bool:
    return (a["n"], a["acc"], a["acc_norm"]) == (b["n"], b["acc"], b["acc_norm"])


# --------------------------------------------------------------------------- scoring


def test_char_run_in_the_run_and_on_the_command_line(corpus, items_file, tmp_path, capsys):
    """The brute force on the checkpoint; the event at iter K equals `eval` of the checkpoint at K;
    `eval RUN` equals `eval` of its export."""
    run, code, events = exportable_char_run(corpus, "c", checkpoint_interval=2, hellaswag_interval=2,
                                            hellaswag_source=f'"{items_file}"')
    assert code == 0
    scored = of_type(events, "hellaswag")
    assert [e["iter"] for e in scored] == [0, 2, 4]  # before training too: the curve's baseline
    for e in scored:
        assert e["n"] == 24 and e["seconds"] > 0 and 0 <= e["acc"] <= 1 and 0 <= e["acc_norm"] <= 1
        assert (e["reference"], e["reference_acc_norm"]) == ("GPT-2 124M", 0.2955)

    model, what = hs.load_target("c")
    assert "iter 4" in what and model.window == 24 and model.vocab == model.module.config.vocab_size
    items = [json.loads(line) for line in open(items_file)]
    check_against_brute_force(model, lambda x: model.module(x, x)[0], items)  # the training forward's logits

    newest = eval_json(capsys, "c", "--hellaswag", items_file)
    assert same_scores(newest, scored[2]) and newest["model"].startswith("run c (pretrain, iter 4")
    older = eval_json(capsys, str(run.checkpoints / "ckpt-00000002.pt"), "--hellaswag", items_file)
    assert same_scores(older, scored[1])

    out = export_run("c", tmp_path / "export")
    capsys.readouterr()
    exported = eval_json(capsys, str(out), "--hellaswag", items_file)
    assert same_scores(exported, newest) and exported["model"] == f"model folder {out}"
    assert cli.main(["eval", "c", "--hellaswag", items_file, "--limit", "5"]) == 0
    text = capsys.readouterr().out
    assert "acc_norm" in text and "items/s" in text and "GPT-2 124M (llm.c)" in text and "\nn          5 " in text


@pytest.fixture
def bpe(monkeypatch):
    """GPT-2's tiktoken file cannot be downloaded here: a byte-level BPE trained on the test text,
    with GPT-2's split pattern and <|endoftext|> id (as tests/test_prepare.py builds it)."""
    from test_prepare import local_gpt2_encoding

    encoding = local_gpt2_encoding(400, TINY_TEXT.splitlines() + SENTENCES)
    monkeypatch.setattr(tokenizers, "load_gpt2_encoding", lambda: encoding)
    return encoding


def test_bpe_run_scores_on_gpt2s_vocabulary_and_equals_its_export(bpe, corpus, items_file, tmp_path, capsys):
    run, code, events = run_inprocess(corpus, "b", ["data.tokenizer=gpt2", "data.workers=1", "model.block_size=24"],
                                      max_iters=2, eval_interval=0, hellaswag_interval=2,
                                      hellaswag_source=f'"{items_file}"')
    assert code == 0
    model, _ = hs.load_target("b")
    # the model's 50,304 rows are GPT-2's 50,257 tokens and padding no token reaches: not scored
    assert model.module.config.vocab_size == tokenizers.GPT2_VOCAB_PADDED and model.vocab == tokenizers.GPT2_VOCAB
    items = [json.loads(line) for line in open(items_file)]
    check_against_brute_force(model, lambda x: model.module(x, x)[0], items)
    newest = eval_json(capsys, "b", "--hellaswag", items_file)
    assert same_scores(newest, of_type(events, "hellaswag")[-1])
    out = export_run("b", tmp_path / "export")
    capsys.readouterr()
    assert same_scores(eval_json(capsys, str(out), "--hellaswag", items_file), newest)


@pytest.fixture
def tiny_gpt2(tmp_path):
    """A 2-layer GPT2LMHeadModel with a 40-token window and its BPE tokenizer, as a model folder."""
    return save_tiny_gpt2(tmp_path / "tiny-gpt2", n_positions=40)


def test_hugging_face_folder_scores_with_its_own_tokenizer(tiny_gpt2, items_file, capsys):
    model, what = hs.load_target(str(tiny_gpt2))
    assert model.window == 40 and model.vocab is None and what == f"model folder {tiny_gpt2}"
    items = [json.loads(line) for line in open(items_file)]
    result = check_against_brute_force(model, lambda x: model.module(input_ids=x).logits, items)
    got = eval_json(capsys, str(tiny_gpt2), "--hellaswag", items_file)
    assert (got["n"], got["acc"], got["acc_norm"]) == (24, result.acc, result.acc_norm)
    assert got["items_per_sec"] > 0 and got["reference"] == {"name": "GPT-2 124M", "params": 124_439_808,
                                                             "acc_norm": 0.2955}


def test_finetune_run_scores_its_hugging_face_model(tiny_gpt2, corpus, items_file, capsys):
    from test_finetune import run_ft

    run, code, events = run_ft(tiny_gpt2, corpus, "ft", ["model.block_size=32"], max_iters=3, eval_interval=0,
                               hellaswag_interval=3, hellaswag_source=f'"{items_file}"', hellaswag_limit=10)
    assert code == 0
    scored = of_type(events, "hellaswag")
    assert [(e["iter"], e["n"]) for e in scored] == [(0, 10), (3, 10)]
    got = eval_json(capsys, "ft", "--hellaswag", items_file, "--limit", "10")  # its model/ folder, iter 3
    assert same_scores(got, scored[-1]) and got["model"] == "run ft (finetune, model/)"


def test_batches_pack_items_and_ranks_share_them(items_file):
    """Items are packed up to the token budget, in order; each rank scores every world_size-th item
    and the counts add up to the single process's."""
    torch.manual_seed(0)
    from gpt2_cockpit.engine.data.tokenizers import CharTokenizer
    from gpt2_cockpit.engine.train.model import GPT, GPTConfig

    tok = CharTokenizer(sorted(set(TINY_TEXT)))
    gpt = GPT(GPTConfig(block_size=32, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16))
    items = hs.load(items_file)
    model = hs.our_model(gpt, tok, "cpu")
    rows = hs.encode(items, model)
    packed = list(hs.batches(rows, budget=4 * 32 * 5))
    assert [r for b in packed for r in b] == rows and max(len(b) for b in packed) == 5
    assert list(hs.batches(rows, budget=1)) == [[r] for r in rows]  # at least one item a batch
    whole = hs.score(model, rows)
    assert hs.score(model, rows, Dist()).losses == whole.losses  # a group of one sums nothing

    class Rank:  # the Dist of one rank of two, its sum an all-reduce of that rank alone
        def __init__(self, rank):
            self.rank, self.world_size, self.is_main = rank, 2, rank == 0

        def sum(self, values):
            return values

    shares = []
    for rank in (0, 1):
        stepper = SimpleNamespace(dist=Rank(rank), workload=SimpleNamespace(tokenizer=tok), raw_model=gpt,
                                  device="cpu", autocast=model.autocast)
        shares.append(hs.RunEval(stepper, items).score())
    assert [s.n for s in shares] == [12, 12]
    assert sum(s.correct for s in shares) == whole.correct
    assert sum(s.correct_norm for s in shares) == whole.correct_norm
    assert shares[0].losses == whole.losses[0::2] and shares[1].losses == whole.losses[1::2]  # interleaved


@pytest.mark.slow
def test_two_ranks_score_their_shares_and_sum_the_counts(cockpit_home, corpus, items_file, capsys):
    """A torchrun group on CPU (gloo): rank 0 reads the items and sends them, each rank scores every
    second one, the counts are all-reduced; the event equals `eval` of the checkpoint in one process."""
    import subprocess

    from conftest import CLI, cli_env, tiny_overrides
    from test_process import events_of, sets

    overrides = tiny_overrides(corpus, max_iters=2, eval_interval=0, hellaswag_interval=2,
                               hellaswag_source=f'"{items_file}"')
    args = ["train", "--headless", "--name", "g", "--gpus", "2", "--set", "train.device=cpu", *sets(overrides)]
    r = subprocess.run(CLI + args, env=cli_env(cockpit_home), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    events = events_of(cockpit_home, "g")
    assert of_type(events, "run")[0]["world_size"] == 2
    scored = of_type(events, "hellaswag")
    assert [(e["iter"], e["n"]) for e in scored] == [(0, 24), (2, 24)]
    assert same_scores(eval_json(capsys, "g", "--hellaswag", items_file), scored[-1])


# --------------------------------------------------------------------------- mistakes and missing network


@pytest.mark.parametrize("line,expected", [
    ("not json", "hellaswag.jsonl:2 is not JSON"),
    ('{"ctx": "a", "endings": ["b", "c", "d", "e"]}', "hellaswag.jsonl:2 has no 'label' field"),
    ('{"endings": ["b", "c", "d", "e"], "label": 1}', "hellaswag.jsonl:2 has no 'ctx' field"),
    ('{"ctx": "a", "endings": ["b", "c", "d"], "label": 1}', "hellaswag.jsonl:2: endings has 3 entries"),
    ('{"ctx": "a", "endings": ["b", "c", "d", "e"], "label": 4}', "hellaswag.jsonl:2: label 4 is not 0, 1, 2 or 3"),
    ('{"ctx": "a", "endings": ["b", "c", "d", "e"], "label": -1}', "label -1 is not 0, 1, 2 or 3"),
    ('[1, 2]', "hellaswag.jsonl:2 is not a JSON object"),
])
def test_a_bad_file_is_one_sentence(tmp_path, capsys, line, expected):
    bad = tmp_path / "hellaswag.jsonl"
    bad.write_text(json.dumps(make_items(1)[0]) + "\n" + line + "\n")
    assert cli.main(["eval", "gpt2", "--hellaswag", str(bad)]) == 2  # told before any model is loaded
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_file_mistakes_and_labels_as_strings(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        hs.load(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(UserError, match="holds no items"):
        hs.load(tmp_path / "empty.jsonl")
    item = make_items(1)[0]
    (tmp_path / "hf.jsonl").write_text(json.dumps({**item, "label": "2"}) + "\n")  # the Hugging Face copy's labels
    assert hs.load(tmp_path / "hf.jsonl")[0].label == 2
    write_items(tmp_path / "many.jsonl", make_items(9))
    assert len(hs.load(tmp_path / "many.jsonl", limit=4)) == 4


def test_a_bad_file_stops_a_run_at_the_start_in_one_sentence(corpus, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ctx": "a", "endings": ["b"], "label": 0}\n')
    _, code, events = run_inprocess(corpus, "bad", max_iters=2, hellaswag_interval=1, hellaswag_source=f'"{bad}"')
    assert code == 2 and not of_type(events, "step")
    (error,) = of_type(events, "error")
    assert error["message"].startswith("train.hellaswag_source: ") and "bad.jsonl:1: endings has 1 entries" in error["message"]


@pytest.fixture
def offline(monkeypatch):
    """HellaSwag's own server, unreachable (a refused port: at once, as a box without network)."""
    monkeypatch.setattr(hs, "VAL_URL", "http://127.0.0.1:9/hellaswag_val.jsonl")


def test_offline_a_run_trains_without_it_and_says_so_once(corpus, offline, capsys):
    t0 = time.monotonic()
    _, code, events = run_inprocess(corpus, "off", max_iters=4, hellaswag_interval=2)  # the default source
    assert code == 0 and time.monotonic() - t0 < 60
    assert not of_type(events, "hellaswag") and of_type(events, "state")[-1]["state"] == "done"
    (notice,) = of_type(events, "notice")
    message = notice["message"]
    assert message.startswith("this run trains without HellaSwag: ") and "\n" not in message
    assert "cannot be downloaded" in message and "hellaswag_source" in message
    assert not of_type(events, "error")


def test_offline_eval_is_one_sentence_and_uses_the_cached_file(corpus, offline, tmp_path, capsys):
    run_inprocess(corpus, "r", max_iters=2, eval_interval=0)
    t0 = time.monotonic()
    assert cli.main(["eval", "r"]) == 2
    err = capsys.readouterr().err
    assert "HellaSwag's validation set is not cached yet" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["eval", "no-such-org/no-such-model", "--hellaswag", write_items(tmp_path / "h.jsonl",
                                                                                      make_items(3))]) == 2
    err = capsys.readouterr().err
    assert "Hub cannot be reached" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert time.monotonic() - t0 < 30  # no retries
    # once fetched, the cached copy is used without the network
    write_items(cache_dir() / "corpora" / "hellaswag_val.jsonl", make_items(7))
    assert eval_json(capsys, "r", "--limit", "5")["n"] == 5
    assert eval_json(capsys, "r")["n"] == 7


def test_targets_that_are_not_models_are_one_sentence(corpus, tmp_path, items_file, capsys):
    run_inprocess(corpus, "fresh", max_iters=2, eval_interval=0, checkpoint_interval=0)
    for args, expected in ((["fresh", "--best"], "no best checkpoint yet"),
                           ([str(tmp_path / "nope.pt")], "does not exist"),
                           ([str(tmp_path)], "neither a run nor a model folder"),
                           (["fresh", "--limit", "0"], "--limit 0")):
        assert cli.main(["eval", *args, "--hellaswag", items_file]) == 2
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, err


# --------------------------------------------------------------------------- figures and presets


def test_reference_is_the_nearest_gpt2_size():
    assert hs.reference_for(100_000).name == "GPT-2 124M"
    assert hs.reference_for(124_475_904).acc_norm == 0.2955  # our gpt2-124m, padded vocabulary
    assert hs.reference_for(200_000_000).name == "GPT-2 124M"  # nearer by ratio
    assert hs.reference_for(300_000_000).name == "GPT-2 350M"
    assert hs.reference_for(800_000_000).acc_norm == 0.4320
    assert hs.reference_for(5_000_000_000).name == "GPT-2 1558M"
    assert str(hs.reference_for(124_000_000)) == "GPT-2 124M 0.2955"


def test_gpt2_presets_score_at_their_evals_and_the_keys_are_checked():
    for name in ("gpt2-124m", "gpt2-40m-12gb"):
        t = presets.load(name).train
        assert t.hellaswag_interval > 0 and t.hellaswag_interval % t.eval_interval == 0
        assert (t.hellaswag_source, t.hellaswag_limit) == (hs.DEFAULT_SOURCE, 0)
    assert presets.load("cpu-tiny").train.hellaswag_interval == 0
    for key in ("train.hellaswag_interval=-1", "train.hellaswag_limit=-5"):
        with pytest.raises(UserError, match="must not be negative"):
            presets.load("cpu-tiny", [key])
    with pytest.raises(UserError, match="hellaswag_source"):
        presets.load("cpu-tiny", ['train.hellaswag_source=" "'])
