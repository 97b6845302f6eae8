"""Run configuration: typed dataclasses, loaded from TOML presets and validated.

A preset is data, never code. Every mistake a user can make in one (malformed TOML,
unknown key, wrong type, out-of-range value) raises UserError naming the file and key.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from .errors import UserError

ENGINES = ("pretrain", "finetune")


@dataclass
class ModelConfig:
    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # attention heads per block
    n_embd: int = 128  # residual stream width
    block_size: int = 64  # context length in tokens
    dropout: float = 0.0  # 0.0 for pretraining big models, ~0.1-0.2 for small data
    bias: bool = False  # biases in Linear and LayerNorm (GPT-2 had them; a bit faster without)
    pretrained: str = ""  # finetune: a hub name ("gpt2") or a local folder


@dataclass
class DataConfig:
    source: str = "builtin:python-docs"  # builtin:NAME | file | folder | hf:NAME[:CONFIG] | url:shakespeare
    tokenizer: str = "char"  # pretrain: "char" (vocabulary from the corpus) or "gpt2" (tiktoken BPE)
    val_fraction: float = 0.1  # share held out for validation (whole documents where there are enough)
    text_column: str = "text"  # .csv/.jsonl/.parquet/hf sources: the column holding the text
    workers: int = 0  # pretrain: tokenizing processes when preparing; 0 = CPU cores - 1
    shard_tokens: int = 100_000_000  # pretrain: tokens per token shard (about 200 MB of uint16)
    # pretrain: "random" windows of the whole corpus (nanoGPT; trains once all of it is prepared),
    # "shards" in order, each shuffled (llm.c; trains as soon as the first shards are prepared),
    # "auto": shards when the corpus makes more than one
    order: str = "auto"


@dataclass
class TrainConfig:
    max_iters: int = 2000  # optimizer steps
    micro_batch: int = 12  # sequences per forward/backward pass
    grad_accum: int = 1  # micro-batches per optimizer step
    learning_rate: float = 1e-3  # peak learning rate, reached after warm-up
    min_lr: float = 1e-4  # floor of the cosine decay (~learning_rate/10, per Chinchilla)
    warmup_iters: int = 100  # linear warm-up steps
    # cosine decays to min_lr by this step, then stays there; "auto": at max_iters, so the decay
    # follows the run (a shorter --set train.max_iters, a live `set train.max_iters` too)
    lr_decay_iters: int | str = "auto"
    weight_decay: float = 0.1  # AdamW decay, applied to 2-D weights only
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # clip the global gradient norm; 0 disables
    # "adamw": AdamW for every parameter; "muon": Muon (torch.optim.Muon) for the blocks' attention
    # and MLP matrices, AdamW for embeddings, biases and LayerNorm gains (engine/train/optim.py);
    # "adamw8bit": bitsandbytes' 8-bit AdamW (CUDA only; pip install "gpt2-cockpit[8bit]"):
    # its moments take ~2 B per parameter instead of 8
    optimizer: str = "adamw"
    muon_lr: float = 0.02  # Muon's peak lr; it follows the schedule at muon_lr / learning_rate times AdamW's
    muon_momentum: float = 0.95  # Muon's momentum (the speedrun records' 0.95)
    muon_nesterov: bool = True  # Nesterov momentum, as torch's Muon and the records
    muon_weight_decay: float = 0.0  # Muon's decoupled decay, per step x Muon's lr (the records: none)
    # how Muon scales its lr by a matrix's shape: "original" sqrt(max(1, out/in)) (Keller Jordan's) or
    # "match_rms_adamw" 0.2 sqrt(max(out, in)) (Moonshot's: then muon_lr is on AdamW's scale)
    muon_adjust_lr: str = "original"
    eval_interval: int = 250  # steps between train/val loss estimates
    eval_iters: int = 20  # batches per loss estimate
    log_interval: int = 10  # steps between `step` events / progress lines
    sample_interval: int = 0  # steps between automatic samples; 0 disables
    checkpoint_interval: int = 250  # steps between checkpoints (an eval step also writes one)
    seed: int = 1337
    dtype: str = "auto"  # auto: bf16 where the GPU has it, else fp16 on CUDA, float32 on CPU
    compile: str | bool = "auto"  # torch.compile; auto: on for CUDA, off on CPU
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # GPU memory this process may use, in GB (GiB), e.g. 12 to rehearse a 12 GB card on a bigger one;
    # 0 = all of it. Through torch.cuda.set_per_process_memory_fraction; a CPU run ignores it
    memory_limit_gb: float = 0.0
    epochs: float = 0.0  # finetune: when > 0, max_iters is derived from this many passes
    # finetune: LoRA adapters (peft) of this rank on lora_targets, the model itself frozen; 0 = full fine-tune
    lora_r: int = 0
    lora_alpha: float = 16.0  # the adapters' update is scaled by lora_alpha / lora_r
    lora_dropout: float = 0.05  # dropout on the adapters' input
    lora_targets: str = "c_attn,c_proj,c_fc"  # module names, comma-separated (GPT-2's attention and MLP)
    # finetune: keep only each block's input in forward and recompute the block in backward
    # (Hugging Face's gradient_checkpointing_enable): activations shrink ~10x for ~1/3 more compute
    gradient_checkpointing: bool = False
    peak_tflops: float = 0.0  # override the GPU peak used for MFU; 0 = from the built-in table
    max_bad_steps: int = 5  # consecutive non-finite steps (each skipped) before the run pauses
    spike_zscore: float = 6.0  # a loss or grad norm this many std devs above its recent mean is a spike; 0 off
    spike_window: int = 128  # steps of history the spike z-score is measured against (as llm.c)
    skip_spikes: bool = False  # skip the optimizer update of a spike step (it is always logged)
    # HellaSwag acc and acc_norm (engine/train/hellaswag.py) every this many steps; 0 = off
    hellaswag_interval: int = 0
    # its items: HellaSwag's validation set (downloaded once), or a local .jsonl in its format
    hellaswag_source: str = "builtin:hellaswag-val"
    hellaswag_limit: int = 0  # the first N items only, the same ones every time; 0 = all 10,042

    @property
    def decay_end(self) -> int:
        """The step where the cosine reaches min_lr: lr_decay_iters, or max_iters when it is "auto"."""
        return self.max_iters if self.lr_decay_iters == "auto" else self.lr_decay_iters

    def lr_at(self, step: int) -> float:
        """Linear warm-up to learning_rate, cosine decay to min_lr at decay_end, then flat.

        Torch-free, so the planner states the same schedule the run follows.
        """
        if step < self.warmup_iters:
            return self.learning_rate * (step + 1) / (self.warmup_iters + 1)
        end = self.decay_end
        if step >= end:
            return self.min_lr
        ratio = (step - self.warmup_iters) / max(1, end - self.warmup_iters)
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (self.learning_rate - self.min_lr)


@dataclass
class Config:
    name: str = "custom"
    description: str = ""
    engine: str = "pretrain"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step on one process (multiply by world size for the run)."""
        return self.train.micro_batch * self.train.grad_accum * self.model.block_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def get(self, key: str) -> Any:
        table, name = _split_key(key)
        return getattr(getattr(self, table), name)


TABLES: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
TOP_LEVEL = ("name", "description", "engine")

# Settings a live run accepts through `gpt2-cockpit set` / the cockpit's edit dialog.
LIVE_KEYS = (
    "train.learning_rate",
    "train.min_lr",
    "train.max_iters",
    "train.eval_interval",
    "train.sample_interval",
    "train.log_interval",
    "train.checkpoint_interval",
    "train.grad_clip",
    "train.spike_zscore",
    "train.skip_spikes",
)

# Keys that only mean something for one engine.
PRETRAIN_ONLY = {"model.n_layer", "model.n_head", "model.n_embd", "model.dropout", "model.bias", "data.tokenizer",
                 "data.workers", "data.shard_tokens", "data.order"}
FINETUNE_ONLY = {"model.pretrained", "train.epochs", "train.lora_r", "train.lora_alpha", "train.lora_dropout",
                 "train.lora_targets", "train.gradient_checkpointing"}
OPTIMIZERS = ("adamw", "muon", "adamw8bit")


def _split_key(key: str, origin: str = "") -> tuple[str, str]:
    where = f"{origin}: " if origin else ""
    parts = key.split(".")
    if len(parts) != 2 or parts[0] not in TABLES:
        raise UserError(f"{where}unknown key '{key}': keys look like model.n_layer, data.source or train.learning_rate")
    table, name = parts
    if name not in {f.name for f in dataclasses.fields(TABLES[table])}:
        known = ", ".join(f.name for f in dataclasses.fields(TABLES[table]))
        raise UserError(f"{where}unknown key '{key}' (the [{table}] keys are: {known})")
    return table, name


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check one value against its declared type; ints are accepted for floats."""
    if tp == (int | str):  # a count of steps or "auto" (train.lr_decay_iters)
        if value == "auto" or isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"{where}: expected an integer or \"auto\", got {value!r}")
    if tp == (str | bool):
        if isinstance(value, bool) or value == "auto":
            return value
        raise UserError(f"{where}: expected true, false or \"auto\", got {value!r}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise UserError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if tp is float and not math.isfinite(value):
        raise UserError(f"{where}: expected a finite number, got {value!r}")
    return value


def _check_ranges(cfg: Config, origin: str) -> None:
    m, d, t = cfg.model, cfg.data, cfg.train

    def bad(key: str, msg: str) -> UserError:
        return UserError(f"{origin}: {key} = {cfg.get(key)!r} {msg}")

    if cfg.engine not in ENGINES:
        raise UserError(f"{origin}: engine = {cfg.engine!r} must be \"pretrain\" or \"finetune\"")
    for key in ("model.n_layer", "model.n_head", "model.n_embd", "model.block_size", "train.micro_batch",
                "train.grad_accum", "train.max_iters", "train.eval_iters", "train.log_interval",
                "train.max_bad_steps", "train.spike_window", "data.shard_tokens"):
        if cfg.get(key) < 1:
            raise bad(key, "must be at least 1")
    for key in ("train.warmup_iters", "train.lr_decay_iters", "train.eval_interval", "train.sample_interval",
                "train.checkpoint_interval", "train.seed", "data.workers", "train.hellaswag_interval",
                "train.hellaswag_limit"):
        if cfg.get(key) != "auto" and cfg.get(key) < 0:
            raise bad(key, "must not be negative")
    for key in ("train.learning_rate",):
        if not cfg.get(key) > 0:
            raise bad(key, "must be greater than 0")
    for key in ("train.min_lr", "train.weight_decay", "train.grad_clip", "train.epochs", "train.peak_tflops",
                "train.spike_zscore", "train.memory_limit_gb"):
        if cfg.get(key) < 0:
            raise bad(key, "must not be negative")
    if t.min_lr > t.learning_rate:
        raise bad("train.min_lr", f"must not exceed train.learning_rate ({t.learning_rate})")
    if t.optimizer not in OPTIMIZERS:
        raise bad("train.optimizer", "must be \"adamw\", \"muon\" or \"adamw8bit\"")
    if not t.muon_lr > 0:
        raise bad("train.muon_lr", "must be greater than 0")
    if not 0 <= t.muon_momentum < 1:
        raise bad("train.muon_momentum", "must be in [0, 1)")
    if t.muon_weight_decay < 0:
        raise bad("train.muon_weight_decay", "must not be negative")
    if t.muon_adjust_lr not in ("original", "match_rms_adamw"):
        raise bad("train.muon_adjust_lr", "must be \"original\" or \"match_rms_adamw\"")
    for key in ("train.beta1", "train.beta2"):
        if not 0 <= cfg.get(key) < 1:
            raise bad(key, "must be in [0, 1)")
    if not 0 <= m.dropout < 1:
        raise bad("model.dropout", "must be in [0, 1)")
    if not 0 < d.val_fraction < 1:
        raise bad("data.val_fraction", "must be between 0 and 1 (exclusive)")
    if m.n_embd % m.n_head:
        raise UserError(f"{origin}: model.n_embd = {m.n_embd} is not divisible by model.n_head = {m.n_head}")
    if d.order not in ("auto", "random", "shards"):
        raise bad("data.order", "must be \"auto\", \"random\" or \"shards\"")
    if d.tokenizer not in ("char", "gpt2"):
        raise bad("data.tokenizer", "must be \"char\" or \"gpt2\"")
    if t.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise bad("train.dtype", "must be \"auto\", \"float32\", \"bfloat16\" or \"float16\"")
    if not (t.device in ("auto", "cpu", "cuda") or (t.device.startswith("cuda:") and t.device[5:].isdigit())):
        raise bad("train.device", "must be \"auto\", \"cpu\", \"cuda\" or \"cuda:N\"")
    if not t.hellaswag_source.strip():
        raise bad("train.hellaswag_source", "must name HellaSwag's items (\"builtin:hellaswag-val\" or a .jsonl file)")
    if not d.source.strip():
        raise bad("data.source", "must name a corpus")
    _check_lora(t, bad)
    if cfg.engine == "finetune" and not m.pretrained:
        raise UserError(f"{origin}: a finetune preset needs model.pretrained (\"gpt2\" or a local model folder)")


def lora_targets(t: TrainConfig) -> list[str]:
    """train.lora_targets as a list of module names."""
    return [name.strip() for name in t.lora_targets.split(",") if name.strip()]


def _check_lora(t: TrainConfig, bad) -> None:
    if t.lora_r < 0:
        raise bad("train.lora_r", "must not be negative (0: a full fine-tune)")
    if not t.lora_alpha > 0:
        raise bad("train.lora_alpha", "must be greater than 0")
    if not 0 <= t.lora_dropout < 1:
        raise bad("train.lora_dropout", "must be in [0, 1)")
    names = lora_targets(t)
    if not names or not all(n.replace(".", "").replace("_", "").isalnum() for n in names):
        raise bad("train.lora_targets", "must name modules, comma-separated (GPT-2's: c_attn, c_proj, c_fc; "
                                        "attn.c_proj or mlp.c_proj for one of the two c_proj)")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def from_dict(raw: dict[str, Any], origin: str = "<config>") -> Config:
    """Build and validate a Config from parsed TOML; `origin` names the file in messages."""
    if not isinstance(raw, dict):
        raise UserError(f"{origin}: expected a TOML table")
    cfg = Config()
    for key, value in raw.items():
        if key in TOP_LEVEL:
            setattr(cfg, key, _coerce(value, str, f"{origin}: {key}"))
        elif key in TABLES:
            if not isinstance(value, dict):
                raise UserError(f"{origin}: [{key}] must be a table")
            table = getattr(cfg, key)
            hints = _hints(type(table))
            for name, v in value.items():
                full = f"{key}.{name}"
                if name not in hints:
                    _split_key(full, origin)  # raises the 'unknown key' message
                setattr(table, name, _coerce(v, hints[name], f"{origin}: {full}"))
        else:
            raise UserError(f"{origin}: unknown key '{key}' (expected name, description, engine, [model], [data], [train])")
    _check_engine_keys(cfg, raw, origin)
    _check_ranges(cfg, origin)
    return cfg


def _check_engine_keys(cfg: Config, raw: dict[str, Any], origin: str) -> None:
    foreign = PRETRAIN_ONLY if cfg.engine == "finetune" else FINETUNE_ONLY
    for table in TABLES:
        for name in raw.get(table, {}) or {}:
            if f"{table}.{name}" in foreign:
                raise UserError(f"{origin}: {table}.{name} does not apply to engine \"{cfg.engine}\"")


def load(path: Path) -> Config:
    """Read and validate a preset or a run's config.toml."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot be read ({e.__class__.__name__})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: malformed TOML ({e})") from None
    return from_dict(raw, str(path))


def parse_value(text: str) -> Any:
    """A --set value: TOML syntax (1e-4, true, "x"), else taken as a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_assignment(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise UserError(f"'{item}' is not KEY=VALUE (for example train.learning_rate=3e-4)")
    key, text = item.split("=", 1)
    key = key.strip()
    _split_key(key)
    return key, parse_value(text.strip())


def with_overrides(cfg: Config, assignments: list[str] | dict[str, Any], origin: str = "--set") -> Config:
    """A validated copy of cfg with KEY=VALUE overrides applied."""
    items = assignments.items() if isinstance(assignments, dict) else [parse_assignment(a) for a in assignments]
    raw = to_raw(cfg)
    for key, value in items:
        table, name = _split_key(key)
        raw[table][name] = value
    # re-validate the whole thing; messages name the override as the origin
    out = from_dict(raw, origin)
    return out


def to_raw(cfg: Config) -> dict[str, Any]:
    """The TOML-shaped dict of a config (only keys meaningful for its engine)."""
    d = cfg.to_dict()
    foreign = PRETRAIN_ONLY if cfg.engine == "finetune" else FINETUNE_ONLY
    for key in foreign:
        table, name = key.split(".")
        d[table].pop(name, None)
    return d


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    s = str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{s}"'


def dumps(cfg: Config) -> str:
    raw = to_raw(cfg)
    lines = [f"{k} = {_toml_value(raw[k])}" for k in TOP_LEVEL]
    for table in TABLES:
        lines.append(f"\n[{table}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in raw[table].items()]
    return "\n".join(lines) + "\n"


def save(cfg: Config, path: Path) -> None:
    """Write config.toml atomically (temp name, fsync, rename)."""
    from .fsutil import atomic_write_text

    atomic_write_text(path, dumps(cfg))
