import torch

from gpt2_cockpit.engine.train.model import GPT, GPTConfig, KVCache


def tiny(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(**{"block_size": 16, "vocab_size": 40, "n_layer": 2, "n_head": 2, "n_embd": 32, **kw}))


def test_forward_shapes_and_loss():
    m = tiny()
    idx = torch.randint(0, 40, (3, 16))
    logits, loss = m(idx, idx)
    assert logits.shape == (3, 16, 40)
    assert abs(loss.item() - torch.log(torch.tensor(40.0)).item()) < 0.5  # near uniform at init
    logits, loss = m(idx)
    assert logits.shape == (3, 1, 40) and loss is None


def test_param_count_excludes_position_embeddings_and_ties_weights():
    m = tiny(bias=False)
    total = sum(p.numel() for p in m.parameters())
    assert m.num_params() == total - 16 * 32
    assert m.lm_head.weight is m.transformer.wte.weight
    d, L, V = 32, 2, 40
    assert m.num_params() == V * d + L * (12 * d * d + 2 * d) + d  # blocks: 12d^2 + two LayerNorm gains


def test_gpt2_small_size():
    m = GPT(GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257, bias=True))
    # GPT-2 small is 124,439,808 parameters with its 1024 x 768 position embeddings (as Hugging Face
    # counts them); we report them without, as nanoGPT does
    assert sum(p.numel() for p in m.parameters()) == 124_439_808
    assert m.num_params() == 124_439_808 - 1024 * 768 == 123_653_376


def test_residual_projections_scaled():
    m = GPT(GPTConfig(n_layer=8, n_head=2, n_embd=64, block_size=8, vocab_size=50))
    std_proj = m.transformer.h[0].attn.c_proj.weight.std().item()
    std_fc = m.transformer.h[0].mlp.c_fc.weight.std().item()
    assert abs(std_fc - 0.02) < 0.003
    assert abs(std_proj - 0.02 / 4) < 0.002  # 1/sqrt(2 * 8)


def test_kv_cache_matches_full_forward():
    m = tiny().eval()
    idx = torch.randint(0, 40, (2, 9))
    full, _ = m(idx)
    cache = KVCache(2)
    m(idx[:, :4], cache=cache)  # a prompt chunk
    m(idx[:, 4:8], cache=cache)  # a second chunk, causal within itself
    step, _ = m(idx[:, 8:9], cache=cache)  # one token
    assert torch.allclose(step, full, atol=1e-5)


def test_generate_deterministic_with_generator_and_slides_past_context():
    m = tiny().eval()
    idx = torch.zeros((1, 3), dtype=torch.long)
    a = m.generate(idx, 40, temperature=0.9, top_k=5, generator=torch.Generator().manual_seed(1))
    b = m.generate(idx, 40, temperature=0.9, top_k=5, generator=torch.Generator().manual_seed(1))
    assert a.shape == (1, 43) and torch.equal(a, b)  # 43 > block_size 16: the window slid


def test_top_k_one_is_greedy():
    m = tiny().eval()
    idx = torch.tensor([[1, 2, 3]])
    out = m.generate(idx, 1, top_k=1, generator=torch.Generator().manual_seed(0))
    logits, _ = m(idx)
    assert out[0, -1].item() == logits[0, -1].argmax().item()


def test_generate_does_not_touch_global_rng():
    m = tiny().eval()
    torch.manual_seed(5)
    before = torch.get_rng_state()
    m.generate(torch.zeros((1, 1), dtype=torch.long), 10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(before, torch.get_rng_state())
