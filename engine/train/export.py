"""A run as a Hugging Face GPT-2 folder (save_pretrained), for `gpt2-cockpit export RUN --to DIR`.

A finetune run already keeps one (runs/<name>/model/, or model-best/ with --best): it is copied;
a LoRA run's is an adapter folder: its base model is loaded, the adapter merged in, and the
result written as a plain model folder.
A pretrain run's newest checkpoint (best.pt with --best) becomes a GPT2LMHeadModel:

- weights map one to one (our module names are GPT-2's); our nn.Linear weights are (out, in)
  and GPT-2's Conv1D weights (in, out), so c_attn, c_proj, c_fc and mlp.c_proj are transposed;
- bias = false models get zero biases (GPT-2 always has them), LayerNorm biases included;
- activation_function = "gelu" (exact, as ours; GPT-2's default gelu_new is the tanh
  approximation), layer_norm_epsilon = 1e-5, n_positions = block_size, embeddings tied;
- GPT-2 BPE runs: the vocabulary is cut back from our padded 50,304 rows to GPT-2's 50,257 (the
  padding rows are never trained and no token id reaches them), with the GPT-2 tokenizer (from
  the Hugging Face cache, else rebuilt from tiktoken's cached encoding, else downloaded);
- char runs: a tokenizer with one token per character of the run's vocabulary, which encodes
  and decodes exactly as ours does (characters it has never seen are dropped). The vocabulary
  is read from the run's token cache; if that is gone, export says so in one sentence.

The tokenizer is settled before anything is written, and the folder is written beside DIR and
moved in, so DIR ends up with a complete model or is left as it was. A non-empty DIR is refused
unless --force, which replaces the files of the export and removes stale weight files, nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .. import config as cfgmod
from ..data.tokenizers import GPT2_VOCAB
from ..errors import NetworkUnavailable, UserError
from ..fsutil import as_plain_files
from ..paths import cache_dir
from . import lora

GPT2_EOT_TEXT = "<|endoftext|>"
STALE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def export_run(run_dir, dest: Path, best: bool = False, force: bool = False, warn=lambda message: None) -> str:
    """Write a run's model into dest as a Hugging Face GPT-2 folder; returns what was exported
    ("pretrain, iter 500, ckpt_000500.pt"). warn(message): told when an unreadable newer
    checkpoint is skipped for an older one."""
    check_destination(dest, force)
    if run_dir.config().engine == "finetune":
        return export_finetune(run_dir, dest, best)
    return export_pretrain(run_dir, dest, best, warn)


def check_destination(dest: Path, force: bool) -> None:
    if dest.exists() and not dest.is_dir():
        raise UserError(f"--to {dest} is a file, not a folder")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise UserError(f"--to {dest} is not empty; pick a new folder, or pass --force to replace the model files in it")


def _staging(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.export{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def _save_folder(model, tokenizer, dest: Path) -> None:
    """save_pretrained of both into a staged folder, installed as dest whole (or not at all)."""
    tmp = _staging(dest)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        install(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def install(tmp: Path, dest: Path) -> None:
    """Move the staged folder's files into dest (a new folder: one rename)."""
    as_plain_files(tmp)
    if not dest.exists():
        os.rename(tmp, dest)
        return
    written = {p.name for p in tmp.iterdir()}
    for name in STALE_WEIGHTS:  # a sharded or .bin model from before would shadow or confuse ours
        if name not in written and (dest / name).is_file():
            (dest / name).unlink()
    for p in tmp.iterdir():
        target = dest / p.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(p, target)
    tmp.rmdir()


# --------------------------------------------------------------------------- finetune runs


def export_finetune(run_dir, dest: Path, best: bool) -> str:
    from .checkpoint import chosen_model_folder

    src = chosen_model_folder(run_dir, best)
    if lora.is_adapter_folder(src):
        return export_merged(src, dest)
    tmp = _staging(dest)
    shutil.copytree(src, tmp)
    install(tmp, dest)
    return f"finetune, {src.name}/"


def export_merged(src: Path, dest: Path) -> str:
    """A LoRA run's adapter folder: its base model with the adapter merged in, as a plain model
    folder (transformers.pipeline loads it without peft)."""
    from .finetune import quiet_transformers, load_pretrained

    model, tokenizer = load_pretrained(str(src))  # the base, from the cache or the Hub, merged
    quiet_transformers()
    _save_folder(model, tokenizer, dest)
    return f"finetune (LoRA), {src.name}/ merged into {lora.base_of(src)}"


# --------------------------------------------------------------------------- pretrain runs


def export_pretrain(run_dir, dest: Path, best: bool, warn=lambda message: None) -> str:
    from . import checkpoint as ckpt

    path, state = ckpt.load_chosen(run_dir, best, warn)
    cfg = cfgmod.from_dict(state["config"], f"{path} (its config)")
    rows = state["model"]["transformer.wte.weight"].shape[0]
    if cfg.data.tokenizer == "gpt2":
        tokenizer, vocab = gpt2_tokenizer(), GPT2_VOCAB
    else:
        saved = (state.get("tokenizer") or {}).get("chars")  # checkpoints since the vocabulary was saved in them
        chars = list(saved) if saved and len(saved) == rows else run_chars(cfg, rows, run_dir.name)
        tokenizer, vocab = char_tokenizer(chars, cfg.model.block_size), len(chars)
    model = to_hf(state["model"], cfg, vocab)
    from .finetune import quiet_transformers

    quiet_transformers()
    _save_folder(model, tokenizer, dest)
    return f"pretrain, iter {int(state['iter'])}, {path.name}"


def hf_config(cfg: cfgmod.Config, vocab: int, eos: int | None):
    from transformers import GPT2Config

    m = cfg.model
    return GPT2Config(
        vocab_size=vocab, n_positions=m.block_size, n_embd=m.n_embd, n_layer=m.n_layer, n_head=m.n_head,
        activation_function="gelu",  # exact GELU, as nn.GELU() in engine/train/model.py
        layer_norm_epsilon=1e-5, resid_pdrop=m.dropout, embd_pdrop=m.dropout, attn_pdrop=m.dropout,
        tie_word_embeddings=True, bos_token_id=eos, eos_token_id=eos,
    )


def gpt2_state_dict(ours: dict, n_layer: int, vocab: int) -> dict:
    """Our GPT's state dict under GPT-2's names and layouts (the first `vocab` embedding rows)."""
    import torch

    def bias_of(prefix: str, size: int) -> torch.Tensor:
        b = ours.get(f"{prefix}.bias")
        return b.clone() if b is not None else torch.zeros(size, dtype=ours[f"{prefix}.weight"].dtype)

    wte = ours["transformer.wte.weight"][:vocab].clone()
    d = wte.shape[1]
    out = {"transformer.wte.weight": wte, "lm_head.weight": wte,
           "transformer.wpe.weight": ours["transformer.wpe.weight"].clone()}
    for name in ("transformer.ln_f",) + tuple(f"transformer.h.{i}.{ln}" for i in range(n_layer) for ln in ("ln_1", "ln_2")):
        out[f"{name}.weight"] = ours[f"{name}.weight"].clone()
        out[f"{name}.bias"] = bias_of(name, d)
    for i in range(n_layer):
        for lin in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            name = f"transformer.h.{i}.{lin}"
            w = ours[f"{name}.weight"]  # nn.Linear: (out, in)
            out[f"{name}.weight"] = w.t().contiguous()  # Conv1D: (in, out)
            out[f"{name}.bias"] = bias_of(name, w.shape[0])
    return out


def to_hf(ours: dict, cfg: cfgmod.Config, vocab: int, eos: int | None = None):
    """A GPT2LMHeadModel holding our weights (float32, eval mode)."""
    import torch
    from transformers import GPT2LMHeadModel

    if eos is None and cfg.data.tokenizer == "gpt2":
        eos = GPT2_VOCAB - 1
    ours = {k: v.float() for k, v in ours.items()}
    model = GPT2LMHeadModel(hf_config(cfg, vocab, eos))
    mapped = gpt2_state_dict(ours, cfg.model.n_layer, vocab)
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to wte, filled with it
    if missing or unexpected:  # a transformers version with other names: a bug, not a user error
        raise RuntimeError(f"GPT-2 weight names changed: missing {missing[:4]}, unexpected {unexpected[:4]}")
    model.tie_weights()
    assert torch.equal(model.lm_head.weight, model.transformer.wte.weight)
    return model.eval()


# --------------------------------------------------------------------------- tokenizers


def run_chars(cfg: cfgmod.Config, rows: int, run_name: str) -> list[str]:
    """The character vocabulary of a char-level run, from its token cache's meta.json."""
    from ..data.shards import cache_key

    tokens = cache_dir() / "tokens"
    candidates = []
    try:
        candidates.append(tokens / cache_key(cfg.data.source, "char", cfg.data.val_fraction, cfg.data.text_column))
    except UserError:
        pass  # the source file is gone or moved: look for its cache by name below
    if tokens.is_dir():
        found = []
        for meta_path in tokens.glob("*/meta.json"):
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                continue
            if meta.get("tokenizer") == "char" and meta.get("source") == cfg.data.source and meta.get("vocab_size") == rows:
                found.append((meta.get("created", 0), meta_path.parent))
        candidates += [folder for _, folder in sorted(found, reverse=True)]
    for folder in candidates:
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        if len(meta.get("chars", [])) == rows:
            return list(meta["chars"])
    raise UserError(f"run {run_name} is char-level and its vocabulary is gone from the token cache "
                    f"({tokens}): prepare data.source {cfg.data.source} again (start any run on it, e.g. "
                    f"'gpt2-cockpit train cpu-tiny --set data.source=... --set train.max_iters=1') and export again")


def char_tokenizer(chars: list[str], max_length: int):
    """One token per character, ids as in our CharTokenizer; unknown characters are dropped, as ours does."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token=chars[0]))
    known = "".join(f"\\x{{{ord(c):X}}}" for c in chars)
    tok.normalizer = normalizers.Replace(Regex(f"[^{known}]"), "")  # drop what the vocabulary lacks
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character alone
    tok.decoder = decoders.Fuse()  # concatenate, no spaces between tokens
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length,
                                   clean_up_tokenization_spaces=False)


def gpt2_tokenizer():
    """GPT-2's tokenizer: the HF cache, else tiktoken's cached encoding, else the Hub; one sentence if none."""
    from transformers import GPT2Tokenizer

    from ..data.tokenizers import GPT2Tokenizer as TiktokenGPT2
    from ..data.sources import hub_reachable

    try:
        cached = GPT2Tokenizer.from_pretrained("gpt2", local_files_only=True)
        if len(cached) > 1:  # transformers 5 builds an empty tokenizer, not an error, when nothing is cached
            return cached
    except (OSError, ValueError):
        pass
    try:
        return tokenizer_from_tiktoken(TiktokenGPT2().enc)
    except UserError:
        pass
    if hub_reachable():
        try:
            return GPT2Tokenizer.from_pretrained("gpt2")
        except (OSError, ValueError):
            pass
    raise NetworkUnavailable("the GPT-2 tokenizer is neither in the Hugging Face cache nor in tiktoken's, and "
                             "the network cannot be reached; connect once and export again (nothing was written)")


def tokenizer_from_tiktoken(enc, eot_text: str = GPT2_EOT_TEXT):
    """A GPT-2 style HF tokenizer with the same ids as a tiktoken byte-level BPE encoding.

    Merges are every split of a token into two tokens, in the order of the merged token's rank:
    tiktoken merges the adjacent pair whose result ranks lowest, and BPE with these merges picks
    the same pair; whole pieces already in the vocabulary are taken as they are (ignore_merges).
    """
    from transformers import GPT2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    ranks: dict[bytes, int] = enc._mergeable_ranks
    byte_char = bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(byte_char[x] for x in b)

    vocab = {text(b): r for b, r in ranks.items()}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        for i in range(1, len(token)):
            a, b = token[:i], token[i:]
            if a in ranks and b in ranks:
                merges.append((max(ranks[a], ranks[b]), rank, text(a), text(b)))
    merges.sort(key=lambda m: (m[1], m[0]))
    eot = enc._special_tokens.get(eot_text, len(ranks))
    vocab[eot_text] = eot
    tok = GPT2Tokenizer(vocab=vocab, merges=[(a, b) for _, _, a, b in merges])
    tok.backend_tokenizer.model.ignore_merges = True
    return tok
