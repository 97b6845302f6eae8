"""Corpora to tokens (torch-free): sources read as documents, tokenizers, the shard cache,
its preparation (parallel, resumable), the shards streamed to a run while they are prepared,
and the finetune engine's packing of documents into blocks.
"""
