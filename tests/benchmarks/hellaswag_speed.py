"""HellaSwag scoring speed (items/s) of random models on synthetic items, on this machine's CPU or GPU.

    python tests/benchmarks/hellaswag_speed.py [--items N] [--models tiny,124m] [--device cpu|cuda]

Items are made here (no download): HellaSwag-sized rows of CTX_TOKENS context tokens and
ENDING_TOKENS tokens per ending, one token per word through a hashing "tokenizer". `tiny` is
cpu-tiny's shape (4 layers, 4 heads, 128 wide, context 64, a 96-character vocabulary; its rows are
cut to the window, as a char model's are); `124m` is GPT-2 small's (12/12/768, context 1024,
50,304 rows). Scoring is engine/train/hellaswag.py's, under bf16 autocast on a GPU, float32 on a CPU.
"""

from __future__ import annotations

import argparse
import random
import time
from contextlib import nullcontext

import torch

from gpt2_cockpit.engine.train import hellaswag as hs
from gpt2_cockpit.engine.train.model import GPT, GPTConfig

CTX_TOKENS = 60
ENDING_TOKENS = 25
SHAPES = {
    "tiny": GPTConfig(block_size=64, vocab_size=96, n_layer=4, n_head=4, n_embd=128, bias=False),
    "124m": GPTConfig(block_size=1024, vocab_size=50304, n_layer=12, n_head=12, n_embd=768, bias=False),
}


class HashTokens:
    """One token per word, its id a hash of the word: rows as long as the items' word counts."""

    def __init__(self, vocab: int):
        self.vocab_size = vocab

    def encode(self, text: str) -> list[int]:
        return [hash(w) % self.vocab_size for w in text.split()]


def items(n: int, seed: int = 0) -> list[hs.Item]:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(5000)]
    return [hs.Item(" ".join(rng.choices(words, k=CTX_TOKENS)),
                    tuple(" ".join(rng.choices(words, k=ENDING_TOKENS)) for _ in range(4)), rng.randrange(4))
            for _ in range(n)]


def measure(shape: str, n: int, device: str) -> hs.Result:
    torch.manual_seed(0)
    config = SHAPES[shape]
    gpt = GPT(config).to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else nullcontext()
    model = hs.our_model(gpt, HashTokens(config.vocab_size), device, autocast)
    rows = hs.encode(items(n), model)
    hs.score(model, rows[:8])  # warm-up (allocator, kernels)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return hs.score(model, rows)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--items", type=int, default=64)
    p.add_argument("--models", default="tiny,124m")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads on a CPU (default: torch's own)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads; rows of "
          f"{CTX_TOKENS} + {ENDING_TOKENS} tokens")
    for shape in args.models.split(","):
        t0 = time.perf_counter()
        r = measure(shape, args.items, args.device)
        whole = hs.VAL_ITEMS / r.items_per_sec
        print(f"{shape:>5}: {r.items_per_sec:8.1f} items/s ({r.n} items in {r.seconds:.2f} s; all {hs.VAL_ITEMS:,} "
              f"would take {whole / 60:.1f} min) [{time.perf_counter() - t0:.1f} s with set-up]")


if __name__ == "__main__":
    main()
