"""HellaSwag: is the model as good as GPT-2 yet? Scored as llm.c and build-nanogpt score it.

An item is a context and four endings, one of them right (`label`). For each ending the model
reads the context's tokens followed by the tokens of " " + ending, and the loss is summed over
the ending's tokens only. `acc` counts the items whose right ending has the lowest summed loss,
`acc_norm` those whose right ending has the lowest mean loss per token (a long ending is not
punished for its length). A row longer than the model's context window is cut from the left:
context tokens go first and the ending stays whole (an ending longer than the window minus one
token, which only a char model with a tiny window meets, keeps its last window - 1 tokens).

Data: HellaSwag's own validation set (`hellaswag_val.jsonl`, 10,042 items, from the paper's
repository, as llm.c fetches it: the file the published figures were scored on), downloaded once
into the cockpit's cache; or any local .jsonl in that format (`ctx`, `endings` (4), `label`).
(The Hugging Face copy, Rowan/hellaswag, keeps its data files off the main branch and writes the
label as a string: the original file is the dependable one.)

Models: anything that gives logits, through `Model`: our GPT with char or GPT-2 BPE tokens, or
a Hugging Face causal LM with its own tokenizer. Scoring is batched: an item's four endings are
four rows of one forward pass, items are packed into a batch of up to BATCH_TOKENS tokens,
right-padded (a causal model never looks at what comes after a row, and padding is never
scored). It runs under no_grad in eval mode (the caller's mode is restored), under the caller's
autocast, and draws no random numbers. On several ranks each scores every world_size-th item
and the counts are summed.

No torch at import time: the cockpit reads REFERENCES and reference_for from here.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import NetworkUnavailable, UserError
from ..paths import cache_dir

DEFAULT_SOURCE = "builtin:hellaswag-val"  # train.hellaswag_source's default and eval's
VAL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
VAL_ITEMS = 10_042
# Rows x padded length of one forward pass. With GPT-2's vocabulary the logits of a full batch
# take 4096 x 50,304 x 2 bytes = 0.4 GB in bf16, plus float32 copies of the scored positions only.
BATCH_TOKENS = 4096
FORMAT = "one JSON object per line with ctx, endings (4 strings) and label (0-3), as HellaSwag's hellaswag_val.jsonl"


# --------------------------------------------------------------------------- the GPT-2 figures


@dataclass(frozen=True)
class Reference:
    name: str
    params: int  # of the Hugging Face checkpoint (tied embeddings counted once)
    acc_norm: float

    def __str__(self) -> str:
        return f"{self.name} {self.acc_norm:.4f}"


# acc_norm of OpenAI's GPT-2 checkpoints (Hugging Face gpt2, gpt2-medium, gpt2-large, gpt2-xl) with
# this scoring, as llm.c's dev/data/hellaswag.py reports them (build-nanogpt's hellaswag.py gets
# 0.2945 for 124M). EleutherAI's lm-evaluation-harness normalises by characters, not tokens, and
# reports 0.3114 for 124M: a different number, not comparable with these.
REFERENCES = (
    Reference("GPT-2 124M", 124_439_808, 0.2955),
    Reference("GPT-2 350M", 354_823_168, 0.3752),
    Reference("GPT-2 774M", 774_030_080, 0.4320),
    Reference("GPT-2 1558M", 1_557_611_200, 0.4889),
)


def reference_for(params: int) -> Reference:
    """The GPT-2 size nearest a parameter count (by ratio: 200M is nearer 124M than 350M)."""
    return min(REFERENCES, key=lambda r: abs(math.log(max(params, 1) / r.params)))


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Item:
    ctx: str
    endings: tuple[str, ...]  # four
    label: int  # the right ending's index


def source_file(source: str) -> Path:
    """The local file of a HellaSwag source: the validation set (downloaded once) or a path."""
    if source == DEFAULT_SOURCE:
        return validation_set()
    if source.startswith("builtin:"):
        raise UserError(f"unknown HellaSwag source {source!r} ({DEFAULT_SOURCE}, or a local .jsonl file in its format)")
    return Path(source).expanduser()


def validation_set() -> Path:
    """hellaswag_val.jsonl in the cockpit's cache, downloaded once (one try, a short timeout)."""
    from ..data.sources import download

    dest = cache_dir() / "corpora" / "hellaswag_val.jsonl"
    try:
        return download(VAL_URL, dest, "HellaSwag's validation set")
    except NetworkUnavailable:
        raise NetworkUnavailable(
            f"HellaSwag's validation set is not cached yet and cannot be downloaded from github.com (11 MB, "
            f"once): connect once, or point --hellaswag (train.hellaswag_source in a run) at a local copy "
            f"of hellaswag_val.jsonl") from None


def load(path: Path, limit: int = 0) -> list[Item]:
    """The items of a HellaSwag-format .jsonl (the first `limit`, when it is not 0); a mistake in
    the file is one sentence naming its line."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise UserError(f"HellaSwag file {path} does not exist") from None
    except OSError as e:
        raise UserError(f"HellaSwag file {path} cannot be read ({e.strerror})") from None
    items = []
    with f:
        for number, line in enumerate(f, 1):
            if line.strip():
                items.append(_item(f"{path}:{number}", line))
                if limit and len(items) >= limit:
                    break
    if not items:
        raise UserError(f"HellaSwag file {path} holds no items (it needs {FORMAT})")
    return items


def load_source(source: str, limit: int = 0) -> tuple[Path, list[Item]]:
    path = source_file(source)
    return path, load(path, limit)


def _item(where: str, line: bytes) -> Item:
    try:
        row = json.loads(line)
    except ValueError:  # UnicodeDecodeError included
        raise UserError(f"{where} is not JSON (a HellaSwag file has {FORMAT})") from None
    if not isinstance(row, dict):
        raise UserError(f"{where} is not a JSON object (a HellaSwag file has {FORMAT})")
    for key in ("ctx", "endings", "label"):
        if key not in row:
            raise UserError(f"{where} has no '{key}' field (a HellaSwag file has {FORMAT})")
    ctx, endings, label = row["ctx"], row["endings"], row["label"]
    if not isinstance(ctx, str):
        raise UserError(f"{where}: ctx is {type(ctx).__name__}, not a string")
    if not isinstance(endings, list) or not all(isinstance(e, str) for e in endings):
        raise UserError(f"{where}: endings must be a list of 4 strings")
    if len(endings) != 4:
        raise UserError(f"{where}: endings has {len(endings)} entries; a HellaSwag item has 4")
    if isinstance(label, str) and label.strip().isdigit():  # the Hugging Face copy writes "2"
        label = int(label)
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= 3:
        raise UserError(f"{where}: label {row['label']!r} is not 0, 1, 2 or 3 (the index of the right ending)")
    return Item(ctx, tuple(endings), label)


# --------------------------------------------------------------------------- the model


@dataclass
class Model:
    """A language model as HellaSwag scores it: token ids in, logits out."""

    module: Any  # the nn.Module: put in eval mode while scoring, its mode restored after
    logits: Callable[[Any], Any]  # (B, T) ids on the device -> (B, T, V) logits of every position
    encode: Callable[[str], list[int]]  # text -> token ids, no special tokens
    window: int  # the most tokens the model reads at once
    vocab: int | None  # logits past this many belong to no token (our GPT-2 rows are padded to 50,304)
    device: str
    autocast: Any = field(default_factory=nullcontext)

    @property
    def params(self) -> int:
        """Parameters, tied ones once (what the GPT-2 sizes count)."""
        return sum(p.numel() for p in self.module.parameters())


def our_model(gpt, tokenizer, device: str, autocast=None) -> Model:
    """Our GPT (engine/train/model.py) with our char or GPT-2 BPE tokenizer (engine/data/)."""
    return Model(gpt, lambda x: gpt(x, every_position=True)[0], tokenizer.encode, gpt.config.block_size,
                 tokenizer.vocab_size, device, autocast or nullcontext())


def hf_model(hf, tokenizer, device: str, autocast=None) -> Model:
    """A Hugging Face causal LM with its own tokenizer."""
    from .finetune import max_positions

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    return Model(hf, lambda x: hf(input_ids=x, use_cache=False).logits, encode, max_positions(hf.config) or 1024,
                 None, device, autocast or nullcontext())


def workload_model(workload, module, device: str, autocast) -> Model:
    """The model a training run holds: the pretrain engine's GPT or the finetune engine's adapter."""
    hf = getattr(module, "hf", None)  # engine/train/finetune.py's CausalLMAdapter around a Hugging Face model
    if hf is not None:
        return hf_model(hf, workload.tokenizer, device, autocast)
    return our_model(module, workload.tokenizer, device, autocast)


# --------------------------------------------------------------------------- scoring


@dataclass
class Rows:
    """An item as the model reads it: four token rows, each cut to the window, and where each
    row's scored tokens (the ending's) start."""

    tokens: list[list[int]]
    starts: list[int]  # tokens[r][starts[r]:] are scored, each predicted from the token before it
    label: int


def encode(items: list[Item], model: Model) -> list[Rows]:
    out = []
    window = model.window
    for item in items:
        ctx = model.encode(item.ctx)
        tokens, starts = [], []
        for ending in item.endings:
            row = ctx + model.encode(" " + ending)
            cut = max(0, len(row) - window)  # from the left: the context's tokens go first
            tokens.append(row[cut:])
            starts.append(max(1, len(ctx) - cut))  # the first scored token needs one before it
        out.append(Rows(tokens, starts, item.label))
    return out


@dataclass
class Result:
    n: int  # items scored (over every rank)
    correct: int  # right by summed loss
    correct_norm: int  # right by mean loss per token
    seconds: float
    # this rank's items: the summed and the mean loss of each of the four endings
    losses: list[tuple[list[float], list[float]]] = field(default_factory=list)

    @property
    def acc(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @property
    def acc_norm(self) -> float:
        return self.correct_norm / self.n if self.n else 0.0

    @property
    def items_per_sec(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else 0.0


def score(model: Model, rows: list[Rows], dist=None) -> Result:
    """acc and acc_norm over `rows` (this rank's share, when `dist` sums the counts of several)."""
    import torch

    start = time.perf_counter()
    module = model.module
    was_training = module.training
    module.eval()
    losses: list[tuple[list[float], list[float]]] = []
    try:
        with torch.no_grad():
            for batch in batches(rows):
                losses += _score_split(model, batch)
    finally:
        module.train(was_training)
    correct = sum(_lowest(sums) == r.label for r, (sums, _) in zip(rows, losses))
    correct_norm = sum(_lowest(means) == r.label for r, (_, means) in zip(rows, losses))
    counts = [len(rows), correct, correct_norm]
    if dist is not None:
        counts = dist.sum(counts)
    n, correct, correct_norm = (int(round(c)) for c in counts)
    return Result(n, correct, correct_norm, time.perf_counter() - start, losses)


def evaluate(model: Model, items: list[Item]) -> Result:
    """Encode and score on this process (the command line); the seconds count the scoring only."""
    return score(model, encode(items, model))


def _lowest(values: list[float]) -> int:
    return min(range(len(values)), key=values.__getitem__)  # the first of equals, as argmin


def batches(rows: list[Rows], budget: int = BATCH_TOKENS):
    """Consecutive items, as many as fit `budget` tokens padded to the batch's longest row (at
    least one item each)."""
    batch: list[Rows] = []
    longest = 0
    for r in rows:
        n = max(len(t) for t in r.tokens)
        if batch and 4 * (len(batch) + 1) * max(longest, n) > budget:
            yield batch
            batch, longest = [], 0
        batch.append(r)
        longest = max(longest, n)
    if batch:
        yield batch


def _score_split(model: Model, batch: list[Rows]) -> list[tuple[list[float], list[float]]]:
    """_score_batch; out of GPU memory, the same items in halves (one item that does not fit is an error)."""
    import torch

    from .step import is_oom

    try:
        return _score_batch(model, batch)
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if not is_oom(e):
            raise
        if len(batch) == 1:
            raise UserError("HellaSwag ran out of GPU memory on a single item (four rows); the model's "
                            "context window does not fit beside training on this GPU") from None
    if model.device.startswith("cuda"):
        torch.cuda.empty_cache()
    half = len(batch) // 2
    return _score_split(model, batch[:half]) + _score_split(model, batch[half:])


def _score_batch(model: Model, batch: list[Rows]) -> list[tuple[list[float], list[float]]]:
    """One forward pass over the four rows of each item: (summed, mean) loss of each ending."""
    import torch
    import torch.nn.functional as F

    rows = [t for r in batch for t in r.tokens]
    starts = [s for r in batch for s in r.starts]
    T = max(1, max(len(t) for t in rows) - 1)  # the input is a row but its last token
    x = torch.zeros(len(rows), T, dtype=torch.long)  # padding: token 0, after the row, never scored
    y = torch.full((len(rows), T), -1, dtype=torch.long)  # -1: not scored (context, padding)
    for i, (t, s) in enumerate(zip(rows, starts)):
        x[i, :len(t) - 1] = torch.tensor(t[:-1], dtype=torch.long)
        y[i, s - 1:len(t) - 1] = torch.tensor(t[s:], dtype=torch.long)
    x, y = x.to(model.device), y.to(model.device)
    with model.autocast:
        logits = model.logits(x)  # (B, T, V)
    if model.vocab is not None:
        logits = logits[..., :model.vocab]
    scored = y >= 0
    row_of = torch.arange(len(rows), device=y.device)[:, None].expand_as(y)[scored]
    token_loss = F.cross_entropy(logits[scored].float(), y[scored], reduction="none")  # (scored tokens,)
    sums = torch.zeros(len(rows), dtype=torch.float32, device=y.device).index_add_(0, row_of, token_loss)
    counts = scored.sum(dim=1)
    sums = torch.where(counts > 0, sums, torch.full_like(sums, math.inf))  # nothing to score: never chosen
    means = sums / counts.clamp(min=1)
    sums, means = sums.tolist(), means.tolist()  # one sync
    return [(sums[4 * i:4 * i + 4], means[4 * i:4 * i + 4]) for i in range(len(batch))]


# --------------------------------------------------------------------------- in a run


class RunEval:
    """A run's HellaSwag: its items (this rank's share) tokenized once at the start, scored every
    train.hellaswag_interval steps on the weights in memory (engine/train/loop.py)."""

    def __init__(self, stepper, items: list[Item]):
        d = stepper.dist
        self.dist = d
        self.model = workload_model(stepper.workload, stepper.raw_model, stepper.device, stepper.autocast)
        self.rows = encode(items[d.rank::d.world_size], self.model)
        self.reference = reference_for(self.model.params)

    @classmethod
    def start(cls, stepper, notice: Callable[[str], None]) -> "RunEval | None":
        """None when train.hellaswag_interval is 0, or when the default items cannot be had
        (offline, not cached): then `notice` says so once and the run trains without it. Rank 0
        reads the items and sends them to the others, so every rank decides alike. A bad local
        file is the user's mistake: one sentence, and the run does not start."""
        t = stepper.cfg.train
        if not t.hellaswag_interval:
            return None
        items = error = offline = None
        if stepper.dist.is_main:
            try:
                _, items = load_source(t.hellaswag_source, t.hellaswag_limit)
            except NetworkUnavailable as e:
                offline = str(e)
            except UserError as e:
                error = str(e)
        items, error, offline = stepper.dist.broadcast((items, error, offline))
        if error is not None:
            raise UserError(f"train.hellaswag_source: {error}")
        if offline is not None:
            notice(f"this run trains without HellaSwag: {offline}")
            return None
        return cls(stepper, items)

    def score(self) -> Result:
        return score(self.model, self.rows, self.dist)


# --------------------------------------------------------------------------- eval TARGET


def load_target(target: str, best: bool = False, warn=lambda message: None) -> tuple[Model, str]:
    """(the model, what it is in words) of a run (its newest checkpoint, or best.pt), a
    checkpoint file, a Hugging Face model folder, or a hub name (the Hugging Face cache first,
    then the Hub once it answers)."""
    import torch

    from . import checkpoint as ckpt
    from ..runs.rundir import resolve

    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = Path(target).expanduser()
    if path.is_file():
        if best:
            raise UserError(f"--best picks a run's best checkpoint; {target} is a checkpoint file already")
        state = ckpt.load_file(path)
        return _from_checkpoint(state, path, path.name, device), f"checkpoint {path} (iter {int(state['iter'])})"
    if path.is_dir() and ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()):
        if best:
            raise UserError(f"--best picks a run's best checkpoint; {target} is a model folder")
        return _from_folder(str(path), device), f"model folder {path}"
    try:
        run = resolve(target)
    except UserError:
        run = None
    if run is not None:
        return _from_run(run, best, device, warn)
    if best:
        raise UserError(f"--best picks a run's best checkpoint and {target} is not a run (see 'gpt2-cockpit runs')")
    if path.is_dir():
        raise UserError(f"{target} is a folder, but neither a run nor a model folder (it has no config.json)")
    if target.startswith((".", "/", "~")) or target.endswith(".pt"):
        raise UserError(f"{target} does not exist (eval takes a run, a checkpoint file, a model folder or a hub name)")
    return _from_hub(target, device), f"hub model {target}"


def _from_run(run, best: bool, device: str, warn) -> tuple[Model, str]:
    from . import checkpoint as ckpt

    if run.config().engine == "finetune":
        folder = ckpt.chosen_model_folder(run, best)
        return _from_folder(str(folder), device), f"run {run.name} (finetune, {folder.name}/)"
    path, state = ckpt.load_chosen(run, best, warn)
    return (_from_checkpoint(state, path, run.name, device),
            f"run {run.name} (pretrain, iter {int(state['iter'])}, {path.name})")


def _from_checkpoint(state: dict, path: Path, name: str, device: str) -> Model:
    """Our GPT from a pretrain checkpoint, with the tokenizer it was trained with."""
    from .. import config as cfgmod
    from ..data.tokenizers import CharTokenizer, GPT2Tokenizer
    from .model import GPT
    from .pretrain import gpt_config
    from .step import resolve_dtype

    cfg = cfgmod.from_dict(state["config"], f"{path} (its config)")
    if cfg.engine != "pretrain":
        raise UserError(f"{path} is a finetune checkpoint: eval its run, or its model/ folder")
    rows = state["model"]["transformer.wte.weight"].shape[0]
    if cfg.data.tokenizer == "gpt2":
        try:
            tokenizer = GPT2Tokenizer()
        except NetworkUnavailable:
            raise NetworkUnavailable("the GPT-2 tokenizer (tiktoken's encoding) is not cached and cannot be "
                                     "downloaded; connect once to cache it, or set TIKTOKEN_CACHE_DIR to a folder "
                                     "holding it") from None
    else:
        from .export import run_chars

        saved = (state.get("tokenizer") or {}).get("chars")
        tokenizer = CharTokenizer(list(saved) if saved and len(saved) == rows else run_chars(cfg, rows, name))
    gpt = GPT(gpt_config(cfg, rows))
    gpt.load_state_dict(state["model"])
    return our_model(gpt.to(device), tokenizer, device, _autocast(device, resolve_dtype(cfg, device)))


def _from_folder(folder: str, device: str) -> Model:
    from .finetune import load_pretrained

    hf, tokenizer = load_pretrained(folder)
    return hf_model(hf.to(device), tokenizer, device, _autocast(device, _hf_dtype(device)))


def _from_hub(name: str, device: str) -> Model:
    from .finetune import load_pretrained

    try:
        hf, tokenizer = load_pretrained(name)
    except NetworkUnavailable:
        raise NetworkUnavailable(
            f"{name} is not a run, a checkpoint or a model folder here, nor a model in the Hugging Face cache, and "
            f"the Hub cannot be reached to download it; connect once (it is cached for later), or see "
            f"'gpt2-cockpit runs'") from None
    return hf_model(hf.to(device), tokenizer, device, _autocast(device, _hf_dtype(device)))


def _hf_dtype(device: str):
    import torch

    if not device.startswith("cuda"):
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def _autocast(device: str, dtype):
    import torch

    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=dtype)
