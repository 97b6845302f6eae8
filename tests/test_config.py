import pytest

from gpt2_cockpit.engine import config as cfgmod
from gpt2_cockpit.engine import presets
from gpt2_cockpit.engine.errors import UserError

SHIPPED = ["cpu-tiny", "gpt2-124m", "gpt2-40m-12gb", "shakespeare-char"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_presets_are_valid(name):
    cfg = presets.load(name)
    assert cfg.name == name and cfg.engine == "pretrain"


def test_presets_from_design():
    tiny = presets.load("cpu-tiny")
    assert (tiny.model.n_layer, tiny.model.n_head, tiny.model.n_embd, tiny.model.block_size) == (4, 4, 128, 64)
    assert tiny.data.source == "builtin:python-docs" and tiny.data.tokenizer == "char"
    sh = presets.load("shakespeare-char")
    assert (sh.model.n_layer, sh.model.n_head, sh.model.n_embd, sh.model.block_size) == (6, 6, 384, 256)
    assert sh.model.dropout == 0.2 and sh.train.learning_rate == 1e-3 and sh.train.max_iters == 5000
    g40 = presets.load("gpt2-40m-12gb")
    assert (g40.model.n_layer, g40.model.n_head, g40.model.n_embd, g40.model.block_size) == (12, 6, 384, 1024)
    assert g40.tokens_per_step == 524_288 and g40.train.max_iters == 20_000
    g124 = presets.load("gpt2-124m")
    assert (g124.model.n_layer, g124.model.n_embd) == (12, 768) and abs(g124.tokens_per_step - 500_000) < 30_000


def test_set_overrides_parse_toml_values():
    cfg = presets.load("cpu-tiny", ["train.learning_rate=3e-4", "train.compile=false", "data.source=my.txt",
                                    'train.dtype="bfloat16"', "train.max_iters=10"])
    assert cfg.train.learning_rate == 3e-4 and cfg.train.compile is False
    assert cfg.data.source == "my.txt" and cfg.train.dtype == "bfloat16" and cfg.train.max_iters == 10


def test_int_accepted_for_float():
    assert presets.load("cpu-tiny", ["train.learning_rate=1"]).train.learning_rate == 1.0


def test_dumps_round_trip(tmp_path):
    cfg = presets.load("gpt2-40m-12gb", ["train.micro_batch=8", "train.grad_accum=64"])
    path = tmp_path / "c.toml"
    cfgmod.save(cfg, path)
    again = cfgmod.load(path)
    assert again == cfg


def _write(tmp_path, text):
    p = tmp_path / "p.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, fragment", [
    ("name = 'x'\n[model\n", "malformed TOML"),
    ("[model]\nn_layers = 4\n", "unknown key 'model.n_layers'"),
    ("[trian]\nx = 1\n", "unknown key 'trian'"),
    ("[train]\nmax_iters = 'many'\n", "train.max_iters: expected an integer, got 'many'"),
    ("[train]\nmax_iters = 1.5\n", "train.max_iters: expected an integer"),
    ("[model]\nbias = 1\n", "model.bias: expected true or false"),
    ("[train]\nlearning_rate = -1e-3\n", "train.learning_rate = -0.001 must be greater than 0"),
    ("[train]\nmicro_batch = 0\n", "train.micro_batch = 0 must be at least 1"),
    ("[model]\nn_embd = 100\nn_head = 3\n", "model.n_embd = 100 is not divisible by model.n_head = 3"),
    ("[model]\ndropout = 1.5\n", "model.dropout = 1.5 must be in [0, 1)"),
    ("[data]\ntokenizer = 'bpe'\n", "data.tokenizer = 'bpe'"),
    ("[train]\ndtype = 'fp8'\n", "train.dtype = 'fp8'"),
    ("[train]\ncompile = 'yes'\n", "train.compile: expected true, false or \"auto\""),
    ("engine = 'rl'\n", "engine = 'rl'"),
    ("engine = 'finetune'\n[model]\npretrained = 'gpt2'\nn_layer = 2\n", "model.n_layer does not apply"),
    ("[train]\nmin_lr = 1.0\nlearning_rate = 0.1\n", "must not exceed train.learning_rate"),
])
def test_bad_presets_name_file_key_and_value(tmp_path, text, fragment):
    path = _write(tmp_path, text)
    with pytest.raises(UserError) as e:
        cfgmod.load(path)
    assert fragment in str(e.value)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("item, fragment", [
    ("train.lr=1", "unknown key 'train.lr'"),
    ("learning_rate=1", "unknown key 'learning_rate'"),
    ("train.learning_rate", "is not KEY=VALUE"),
    ("train.max_iters=abc", "expected an integer, got 'abc'"),
    ("model.n_head=5", "not divisible"),
])
def test_bad_overrides(item, fragment):
    with pytest.raises(UserError) as e:
        presets.load("cpu-tiny", [item])
    assert fragment in str(e.value)


def test_unknown_preset_lists_available():
    with pytest.raises(UserError) as e:
        presets.find("gpt5")
    assert "unknown preset 'gpt5'" in str(e.value) and "cpu-tiny" in str(e.value)


def test_user_preset_saved_listed_and_shadows(cockpit_home):
    cfg = presets.load("cpu-tiny", ["train.max_iters=77"])
    path = presets.save_user(cfg, "mine")
    assert path.parent == cockpit_home / "presets"
    infos = {i.name: i for i in presets.available()}
    assert infos["mine"].origin == "user"
    assert presets.load("mine").train.max_iters == 77
    presets.save_user(presets.load("cpu-tiny", ["train.max_iters=5"]), "cpu-tiny")
    assert presets.load("cpu-tiny").train.max_iters == 5
    with pytest.raises(UserError):
        presets.save_user(cfg, "../evil")
