import pytest
import torch
from conftest import all_logits, tiny

import generate as G
import tokenizer
from generate import generate, new_cache

GREEDY = dict(temperature=0, repetition_penalty=1.0)  # the model's own argmax at every step


def greedy_recomputed(model, idx, max_new_tokens):
    """nanoGPT's way, for reference: the whole context through the model every step, no cache, over the
    windows stream() keeps (a restart from the last half of the window when it is full)."""
    window, context, out = model.config.max_seq_len, idx, idx
    for _ in range(max_new_tokens):
        token = all_logits(model, context)[:, -1].argmax(-1, keepdim=True)
        out, context = torch.cat((out, token), 1), torch.cat((context, token), 1)
        if context.shape[1] > window:
            context = context[:, -(window // 2) :]
    return out


def test_greedy_generation_with_the_cache_equals_recomputing_the_context_even_past_the_window():
    model = tiny()
    idx = torch.randint(0, 97, (2, 6))
    cached = generate(model, idx, 70, **GREEDY)  # 76 tokens: the 32-token window slides twice
    assert cached.shape == (2, 76)
    assert torch.equal(cached, greedy_recomputed(model, idx, 70))
    assert torch.equal(cached[:, :6], idx)


def test_past_the_context_generation_restarts_from_the_last_half_of_the_window():
    model = tiny()
    idx = torch.randint(0, 97, (1, 30))
    out = generate(model, idx, 4, **GREEDY)
    # token 32 still sees the full 32-token window; then the window restarts from its last 16 tokens
    assert out[0, 32].item() == all_logits(model, out[:, :32])[0, -1].argmax().item()
    assert out[0, 33].item() == all_logits(model, out[:, 17:33])[0, -1].argmax().item()


def test_top_k_keeps_exactly_k():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5]])
    kept = G.top_k_filter(logits, 2).isfinite()
    assert kept.tolist() == [[False, True, False, True, False]]


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.1, 0.5, 0.1, 0.3]])
    logits = probs.log()
    assert G.top_p_filter(logits, 0.7).isfinite().tolist() == [[False, True, False, True]]
    assert G.top_p_filter(logits, 0.5).isfinite().tolist() == [[False, True, False, False]]
    assert G.top_p_filter(logits, 0.81).isfinite().sum().item() == 3
    assert G.top_p_filter(logits, 1.0).isfinite().all()


@pytest.mark.parametrize("scale", [0.3, 3.0, 30.0])  # a nucleus of hundreds of tokens, of tens, of one
def test_top_p_keeps_the_most_likely_tokens_until_their_mass_reaches_p_over_a_large_vocabulary(scale):
    torch.manual_seed(0)
    logits = torch.randn(3, 5000) * scale
    probs = logits.softmax(-1)
    kept = G.top_p_filter(logits, 0.9).isfinite()
    for row in range(3):
        mass = probs[row][kept[row]].sum().item()
        smallest_kept = probs[row][kept[row]].min().item()
        assert mass >= 0.9 - 1e-6 and mass - smallest_kept < 0.9  # reaches p, and needs its last token to
        assert (probs[row][~kept[row]] <= smallest_kept).all()  # none left out is more likely than one kept


def test_repetition_penalty_follows_hf_semantics():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert G.apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -4.0, 1.0, -1.0]]


def test_sampling_only_draws_tokens_the_filters_keep():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    seen = torch.zeros(4, 50, dtype=torch.bool)
    allowed = torch.topk(logits, 3).indices
    generators = [torch.Generator().manual_seed(i) for i in range(4)]
    for _ in range(50):
        token = G.sample_token(logits, seen, generators, 1.0, 3, 1.0, 1.0)
        assert (allowed == token).any(dim=1).all()
    assert torch.equal(
        G.sample_token(logits, seen, generators, 0, 0, 1.0, 1.0), logits.argmax(-1, keepdim=True)
    )


def test_the_seed_decides_the_sample_and_the_global_rng_does_not():
    model = tiny()
    idx = torch.randint(0, 97, (1, 4))
    settings = dict(temperature=1.0, top_k=20, top_p=0.9, repetition_penalty=1.1)
    torch.manual_seed(1)
    first = generate(model, idx, 20, seed=5, **settings)
    torch.manual_seed(2)  # another global state changes nothing
    assert torch.equal(generate(model, idx, 20, seed=5, **settings), first)
    assert not torch.equal(generate(model, idx, 20, seed=6, **settings), first)


def test_each_row_of_a_batch_gets_the_text_it_would_get_alone_with_its_seed():
    model = tiny()
    prompt = torch.randint(0, 97, (1, 4))
    settings = dict(temperature=1.0, top_k=0, top_p=0.95, repetition_penalty=1.1)
    batch = generate(model, prompt.repeat(4, 1), 40, seed=10, **settings)
    for i in range(4):
        assert torch.equal(batch[i : i + 1], generate(model, prompt, 40, seed=10 + i, **settings))


def test_each_sequence_stops_at_end_of_text():
    model = tiny()
    idx = torch.randint(0, 97, (2, 4))
    free = generate(model, idx, 12, **GREEDY)
    eos = free[0, 6].item()  # the third token sequence 0 generates
    assert eos not in free[1, 4:].tolist()  # so sequence 1 runs to max_new_tokens
    out = generate(model, idx, 12, eos_id=eos, **GREEDY)
    assert out[0, 6].item() == eos and (out[0, 6:] == eos).all()
    assert torch.equal(out[0, :7], free[0, :7])
    assert torch.equal(out[1], free[1])
    # when every sequence has finished, generation stops
    single = generate(model, idx[:1], 12, eos_id=eos, **GREEDY)
    assert single.shape[1] == 7


def test_a_prompt_longer_than_the_context_is_refused():
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        generate(tiny(), torch.zeros(1, 33, dtype=torch.long), 1)


def test_the_cache_holds_every_layers_keys_and_values_for_the_whole_context():
    model = tiny(n_kv_heads=2)
    cache = new_cache(model, 3)
    assert len(cache) == 2 and all(k.shape == v.shape == (3, 2, 33, 16) for k, v in cache)


@pytest.mark.parametrize("temperature", [1e-38, 1e-300, 5e-6])
def test_a_temperature_too_small_to_sample_at_is_greedy(temperature):
    """Dividing logits by 1e-38 overflows to inf (nothing left to sample): below GREEDY_BELOW it is greedy."""
    model = tiny()
    idx = torch.randint(0, 97, (2, 4))
    sampled = generate(model, idx, 20, temperature=temperature, repetition_penalty=1.0, seed=3)
    assert torch.equal(sampled, generate(model, idx, 20, **GREEDY))


def test_the_traced_decode_gives_the_eager_tokens():
    """What torch.compile captures of a cached decode (the in-place cache writes, the position that changes
    every step) gives the eager tokens; inductor's own kernels are checked on GPU, in test_cuda.py."""
    model = tiny()
    idx = torch.randint(0, 97, (2, 5))
    eager = generate(model, idx, 12, **GREEDY)
    assert torch.equal(generate(torch.compile(model, backend="aot_eager"), idx, 12, **GREEDY), eager)


def test_a_prompt_is_preceded_by_end_of_text_and_cropped_to_leave_room_for_a_token():
    enc = tokenizer.gpt2_encoding()
    ids, warning = G.encode_prompt(enc, "Once upon a time", 32)
    assert ids == [enc.eot_token] + enc.encode_ordinary("Once upon a time") and warning is None
    long = " ".join(["word"] * 40)
    ids, warning = G.encode_prompt(enc, long, 32)
    assert ids == ([enc.eot_token] + enc.encode_ordinary(long))[-31:] and "kept its last 31" in warning
