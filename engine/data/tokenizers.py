"""The pretrain engine's tokenizers: char (the vocabulary from the corpus) and gpt2 (tiktoken's BPE).

The finetune engine uses the model's own Hugging Face tokenizer (engine/data/packing.py).
Never imports torch.
"""

from __future__ import annotations

import numpy as np

from ..errors import NetworkUnavailable, UserError

GPT2_VOCAB = 50257  # GPT-2's BPE: 50,000 merges, 256 bytes and <|endoftext|>
GPT2_EOT = 50256  # <|endoftext|> in GPT-2's BPE, placed between documents
GPT2_VOCAB_PADDED = 50304  # 50257 rounded up to a multiple of 64: faster matmuls, unused rows never trained


class CharTokenizer:
    """One token per character; the vocabulary is the set of characters in the corpus."""

    kind = "char"

    def __init__(self, chars: list[str]):
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.vocab_size = len(chars)
        self.eot = None
        # sorted code points: ids by binary search, a whole text at a time (the chars are sorted)
        self._points = np.array([ord(c) for c in chars], dtype=np.uint32)

    def encode(self, text: str) -> list[int]:
        return [self.stoi[c] for c in text if c in self.stoi]  # characters never seen are dropped

    def encode_array(self, text: str) -> np.ndarray:
        """The ids of `text` as an int64 array (fast; every character must be in the vocabulary)."""
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        return np.searchsorted(self._points, points)

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids if 0 <= i < len(self.chars))


def load_gpt2_encoding():
    """tiktoken's GPT-2 encoding (downloaded once and cached by tiktoken). Tests replace this function."""
    import tiktoken

    return tiktoken.get_encoding("gpt2")


class GPT2Tokenizer:
    """tiktoken's GPT-2 BPE (the encoding file is downloaded once and cached by tiktoken)."""

    kind = "gpt2"
    vocab_size = GPT2_VOCAB

    def __init__(self):
        try:
            self.enc = load_gpt2_encoding()
        except ImportError:
            raise UserError("the gpt2 tokenizer needs tiktoken (pip install tiktoken)") from None
        except Exception:
            raise NetworkUnavailable(
                "tiktoken's GPT-2 encoding is not cached and could not be downloaded; connect once to cache it "
                "(or set TIKTOKEN_CACHE_DIR to a folder holding it), or use --set data.tokenizer=char"
            ) from None
        self.eot = GPT2_EOT

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def decode(self, ids) -> str:
        return self.enc.decode([i for i in ids if i < self.vocab_size])


def tokenizer_from_meta(meta: dict):
    return CharTokenizer(meta["chars"]) if meta["tokenizer"] == "char" else GPT2Tokenizer()
