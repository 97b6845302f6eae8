"""Training on a corpus while it is still being prepared: shards in a fixed order, each shuffled.

With data.order = "shards" (the default for a corpus of more than one shard), the training data
is one long sequence of windows of block_size + 1 tokens: the preparation plan's units in index
order, each unit's train tokens cut into windows and shuffled with a generator seeded by (seed,
epoch, unit), as llm.c and nanochat read their shards. Step k trains on windows [k*R, (k+1)*R),
R the rows of a step (micro_batch x grad_accum x world size, unchanged by an OOM re-split), so:

- a batch depends only on k and on the shards before it in that order, never on how far the
  preparation got: training starts once the first shards exist, and a resumed run draws exactly
  the batches it would have drawn;
- if training outruns the preparation, `missing(k)` says which shard it waits for.

Evaluation reads fixed random windows from the eval units (prepare.eval_units, prepared first).
Everything is read from the cache folder (manifest.json, unit-NNNNN.json records, shards), so
any process can follow a preparation another one runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..errors import UserError
from . import prepare as prep
from .shards import ShardedTokens, check_split_long_enough

PERMUTATIONS_KEPT = 4  # shuffled window orders kept in memory (a batch spans one or two units)


class ShardStream:
    def __init__(self, folder: Path, block_size: int, seed: int):
        self.folder = folder
        self.block_size = block_size
        self.seed = seed
        manifest = json.loads((folder / "manifest.json").read_text())
        self.meta = {"tokenizer": manifest["tokenizer"], "chars": manifest["chars"]}
        self.vocab_size, self.dtype = prep.vocabulary(manifest["tokenizer"], manifest["chars"])
        self.units = manifest["plan"]["units"]
        self.eval_units = prep.eval_units(manifest["plan"], manifest["val_fraction"], manifest["shard_tokens"],
                                          manifest["tokenizer"])
        self.source = manifest["source"]
        # units with training text (a text file's held-out tail is a unit of its own)
        self.train_units = sum(prep.split_share(manifest["plan"]["mode"], u, "train", manifest["val_fraction"]) > 0
                               for u in self.units)
        self.counts: dict[int, dict[str, int]] = {}  # finished units: their train and val token counts
        self.cum = [0]  # cum[i]: windows in units [0, i) of the finished prefix
        self.complete = False
        self._arrays: dict[tuple[str, int], np.ndarray] = {}
        self._perms: dict[tuple[int, int], np.ndarray] = {}
        self._eval: dict[str, ShardedTokens] = {}
        self.refresh()

    # ---------------------------------------------------------------- what is ready

    def refresh(self) -> None:
        """Take in the units finished since the last look (their records appear after their shards)."""
        if self.complete:
            return
        meta = self.folder / "meta.json"
        if meta.exists():
            shards = json.loads(meta.read_text())["shards"]
            for i in range(len(self.units)):
                self.counts[i] = {s: int(shards[s][i][1]) for s in ("train", "val")}
        else:
            for i in [*self.eval_units["all"], *range(len(self.cum) - 1, len(self.units))]:
                if i not in self.counts:
                    record = self.folder / f"unit-{i:05d}.json"
                    try:
                        r = json.loads(record.read_text())
                    except (OSError, ValueError):
                        if i >= len(self.cum) - 1:
                            break  # the prefix ends here for now
                        continue
                    self.counts[i] = {"train": int(r["n_train"]), "val": int(r["n_val"])}
        while len(self.cum) - 1 < len(self.units) and len(self.cum) - 1 in self.counts:
            self.cum.append(self.cum[-1] + self._windows(len(self.cum) - 1))
        self.complete = len(self.cum) - 1 == len(self.units)

    def _windows(self, unit: int) -> int:
        return max(0, (self.counts[unit]["train"] - 1) // self.block_size)

    def missing(self, k: int, rows: int) -> str | None:
        """Why step k (of `rows` rows) cannot be drawn yet, or None when its shards are ready."""
        self.refresh()
        waiting = [i for i in self.eval_units["all"] if i not in self.counts]
        if waiting:
            return (f"waiting for the evaluation shards ({len(self.eval_units['all']) - len(waiting)} of "
                    f"{len(self.eval_units['all'])} ready)")
        for split in ("train", "val"):
            check_split_long_enough(self.source, split, len(self.eval_tokens(split)), self.block_size,
                                    " in the evaluation shards")
        if self.complete:
            # windows are cut shard by shard: some shard must hold one
            longest = max((c["train"] for c in self.counts.values()), default=0)
            check_split_long_enough(self.source, "train", longest, self.block_size, " in its longest shard")
            return None
        if self.cum[-1] >= (k + 1) * rows:
            return None
        shard = len(self.cum)  # 1-based number of the first unfinished unit
        return f"waiting for shard {shard} of {len(self.units)}: training is ahead of the data preparation"

    # ---------------------------------------------------------------- reading

    def batch(self, k: int, rows: int) -> np.ndarray:
        """Step k's (rows, block_size + 1) int64 windows, once its shards are ready (the loop waits
        for them; another rank may have seen their records a moment before this one)."""
        while self.missing(k, rows) is not None:
            time.sleep(0.05)
        T = self.block_size
        out = np.empty((rows, T + 1), dtype=np.int64)
        for r, g in enumerate(range(k * rows, (k + 1) * rows)):
            unit, start = self._locate(g)
            out[r] = self._array("train", unit)[start:start + T + 1]
        return out

    def _locate(self, g: int) -> tuple[int, int]:
        """(unit, first token) of global window g: epochs wrap once every unit is prepared."""
        total = self.cum[-1]
        epoch, w = divmod(g, total) if self.complete else (0, g)
        if w >= total:
            raise RuntimeError(f"window {g} is not prepared yet (missing() must be asked first)")
        unit = int(np.searchsorted(self.cum, w, side="right")) - 1
        return unit, int(self._permutation(epoch, unit)[w - self.cum[unit]]) * self.block_size

    def _permutation(self, epoch: int, unit: int) -> np.ndarray:
        key = (epoch, unit)
        if key not in self._perms:
            if len(self._perms) >= PERMUTATIONS_KEPT:
                self._perms.pop(next(iter(self._perms)))
            rng = np.random.default_rng([self.seed, epoch, unit])
            self._perms[key] = rng.permutation(self._windows(unit))
        return self._perms[key]

    def _array(self, split: str, unit: int) -> np.ndarray:
        key = (split, unit)
        if key not in self._arrays:
            path = self.folder / f"{split}-{unit:05d}.bin"
            n = self.counts[unit][split]
            self._arrays[key] = np.memmap(path, dtype=self.dtype, mode="r") if n else np.empty(0, self.dtype)
        return self._arrays[key]

    def eval_tokens(self, split: str) -> ShardedTokens:
        """The tokens evaluation draws its windows from: `split` of the eval units."""
        if split not in self._eval:
            self._eval[split] = ShardedTokens([self._array(split, i) for i in self.eval_units[split]], self.dtype)
        return self._eval[split]

    def eval_windows(self, split: str, offsets: np.ndarray) -> np.ndarray:
        return self.eval_tokens(split).take(offsets[:, None] + np.arange(self.block_size + 1))


def wait_for_manifest(folder: Path, preparation: "prep.Preparation | None", tokenizer: str) -> None:
    """Until the preparation's plan (and, for char, its vocabulary) is in the manifest: the model
    cannot be built before. A preparation that failed raises its error here."""

    def planned() -> bool:
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
        except (OSError, ValueError):
            return (folder / "meta.json").exists()
        return manifest.get("version") == prep.MANIFEST_VERSION and (tokenizer != "char" or bool(manifest["chars"]))

    _wait(planned, preparation, f"the preparation of {folder.name} ended without a plan")


def wait_for_meta(folder: Path, preparation: "prep.Preparation | None") -> None:
    """Until the preparation is complete (its meta.json is written last)."""
    _wait(lambda: (folder / "meta.json").exists(), preparation,
          f"the preparation of {folder.name} ended before it was complete")


def _wait(ready, preparation: "prep.Preparation | None", ended: str, poll: float = 0.2) -> None:
    """Poll `ready()`; the preparation this process runs, should it end first, raises its error
    (or `ended`). Another process's preparation is followed through the files alone."""
    while not ready():
        if preparation is not None and preparation.finished.is_set() and not ready():
            raise preparation.error or UserError(ended)
        time.sleep(poll)
