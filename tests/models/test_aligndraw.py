from dataclasses import replace

import pytest
import torch

from models.aligndraw import AlignDRAW, AlignDRAWConfig
from models.elbo import bernoulli_nll
from models.gaussian import kl_diagonal
from models.sampling import sample
from tests.models.conftest import TINY_ALIGN, block_images, random_captions


def test_paper_configs_construct_and_run():
    mnist = AlignDRAW()
    c = mnist.config
    assert (c.height, c.width, c.channels, c.steps, c.enc_size, c.dec_size, c.z_size, c.read_n, c.write_n,
            c.lang_size, c.align_size) == (60, 60, 1, 32, 300, 300, 150, 8, 8, 128, 512)
    coco = AlignDRAW(AlignDRAWConfig.coco())
    ids, lengths = random_captions(2, 9, coco.config.vocab_size)
    elbo = coco(torch.rand(2, 3, 32, 32), ids, lengths)
    assert elbo.kl.shape == (2, 32)
    out = sample(coco, captions=ids, lengths=lengths, seeds=[0, 1])
    assert out.images.shape == (2, 3, 32, 32) and out.canvases.shape == (2, 32, 3, 32, 32)


def test_caption_encoder_ignores_batch_order_and_padding(tiny_align):
    enc = tiny_align.caption_encoder
    ids, lengths = random_captions(6, 7, TINY_ALIGN.vocab_size, seed=1)
    h, mask = enc(ids, lengths)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    h_perm, _ = enc(ids[perm], lengths[perm])
    torch.testing.assert_close(h_perm, h[perm], atol=1e-6, rtol=0)
    # Longer padding filled with arbitrary word ids: real words' states are unchanged, padding outputs are 0.
    padded = torch.randint(1, TINY_ALIGN.vocab_size, (6, 11))
    padded[:, :7] = ids
    padded[:, :7][ids == 0] = 3
    h_pad, mask_pad = enc(padded, lengths)
    torch.testing.assert_close(h_pad[:, :7], h, atol=1e-6, rtol=0)
    assert (h_pad[~mask_pad] == 0).all() and (h[~mask] == 0).all()


def test_backward_direction_reads_each_captions_own_words_in_reverse(tiny_align):
    enc = tiny_align.caption_encoder
    ids, lengths = random_captions(4, 6, TINY_ALIGN.vocab_size, seed=2)
    h, _ = enc(ids, lengths)
    for b in range(4):
        n = int(lengths[b])
        alone = enc.embed(ids[b, :n].flip(0))[None]
        expected_bwd, _ = enc.backward_lstm(alone)
        torch.testing.assert_close(h[b, :n, TINY_ALIGN.lang_size :], expected_bwd[0].flip(0), atol=1e-6, rtol=0)
        expected_fwd, _ = enc.forward_lstm(enc.embed(ids[b, :n])[None])
        torch.testing.assert_close(h[b, :n, : TINY_ALIGN.lang_size], expected_fwd[0], atol=1e-6, rtol=0)


def test_align_is_additive_attention_over_real_words(tiny_align):
    ids, lengths = random_captions(5, 8, TINY_ALIGN.vocab_size, seed=3)
    words, mask = tiny_align.caption_encoder(ids, lengths)
    align = tiny_align.align
    h_gen = torch.randn(5, TINY_ALIGN.dec_size)
    s, alpha = align(align.keys(words), words, mask, h_gen)
    # Reference: e_tj = vᵀ tanh(U h_j + W h + b), written naively.
    e = (torch.tanh(align.u(words) + align.w(h_gen)[:, None]) @ align.v.weight[0])
    e = e.masked_fill(~mask, float("-inf"))
    ref_alpha = torch.softmax(e, -1)
    torch.testing.assert_close(alpha, ref_alpha, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(s, (ref_alpha[..., None] * words).sum(1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(5))
    assert (alpha[~mask] == 0).all()


def test_sampled_alignments_sum_to_one_and_are_exactly_zero_on_padding(tiny_align):
    ids, lengths = random_captions(6, 9, TINY_ALIGN.vocab_size, seed=4)
    out = sample(tiny_align, captions=ids, lengths=lengths, seeds=list(range(6)))
    assert out.alignments is not None and out.alignments.shape == (6, TINY_ALIGN.steps, 9)
    torch.testing.assert_close(out.alignments.sum(-1), torch.ones(6, TINY_ALIGN.steps))
    pad = (torch.arange(9) >= lengths[:, None])[:, None].expand_as(out.alignments)
    assert (out.alignments[pad] == 0).all()


def test_word_keys_are_computed_once_per_caption_not_per_step(tiny_align):
    calls = []
    tiny_align.align.u.register_forward_hook(lambda *a: calls.append(1))
    ids, lengths = random_captions(3, 5, TINY_ALIGN.vocab_size)
    sample(tiny_align, captions=ids, lengths=lengths, seeds=[1, 2, 3])
    assert len(calls) == 1


@pytest.mark.parametrize("variant", [{}, {"align_values": "words", "prior_context": True}])
def test_kl_and_log_ratio_are_taken_against_the_state_dependent_prior(variant):
    """Replay the inference pass and check each KL term, and each step's log q − log p at the sampled z, against the
    prior computed from h^gen_{t−1} (and s_t with prior_context)."""
    torch.manual_seed(0)
    m = AlignDRAW(replace(TINY_ALIGN, **variant))
    x = torch.rand(3, 1, 16, 16)
    ids, lengths = random_captions(3, 6, TINY_ALIGN.vocab_size, seed=5)
    elbo = m(x, ids, lengths, generator=torch.Generator().manual_seed(7))
    eps = torch.randn(3, TINY_ALIGN.steps, TINY_ALIGN.z_size, generator=torch.Generator().manual_seed(7))
    states, mask = m.caption_encoder(ids, lengths)
    keys = m.align.keys(states)
    values = states if m.word_values is None else m.word_values(ids) * mask[..., None]
    h, c = m.generator_initial(3)
    enc = m.posterior.initial(3)
    canvas = m.canvas0.expand(3, -1, -1, -1)
    for t in range(TINY_ALIGN.steps):
        mu_q, ls_q, enc = m.posterior(x, canvas, h, enc)
        s, _ = m.align(keys, values, mask, h)
        if t == 0:
            mu_p = ls_p = torch.zeros_like(mu_q)
        else:
            mu_p, ls_p = torch.tanh(m.prior(torch.cat([h, s], 1) if variant else h)).chunk(2, 1)
        torch.testing.assert_close(elbo.kl[:, t], kl_diagonal(mu_q, ls_q, mu_p, ls_p))
        z = mu_q + ls_q.exp() * eps[:, t]
        # the importance weight's step term (L_k, served likelihoods): log q(z_t | x) − log p(z_t | h_{t−1}) in float64
        q = torch.distributions.Normal(mu_q.double(), ls_q.double().exp())
        p = torch.distributions.Normal(mu_p.double(), ls_p.double().exp())
        log_ratio = q.log_prob(z.double()).sum(-1) - p.log_prob(z.double()).sum(-1)
        torch.testing.assert_close(elbo.log_ratio[:, t].double(), log_ratio, rtol=1e-5, atol=1e-4)
        h, c = m.generator_lstm(torch.cat([z, s], 1), (h, c))
        canvas = canvas + m.write(h)[0]
    assert elbo.kl[:, 1:].abs().sum() > 0


def test_a_few_hundred_steps_on_a_fixed_batch_cut_the_loss_by_a_large_factor(tiny_align):
    g = torch.Generator().manual_seed(0)
    x = block_images(6, 16, 16)
    ids, lengths = random_captions(6, 5, TINY_ALIGN.vocab_size, seed=6)
    opt = torch.optim.Adam(tiny_align.parameters(), lr=3e-3)
    first = tiny_align(x, ids, lengths, generator=g).loss.item()
    for _ in range(600):
        opt.zero_grad()
        tiny_align(x, ids, lengths, generator=g).loss.backward()
        torch.nn.utils.clip_grad_norm_(tiny_align.parameters(), 10)
        opt.step()
    with torch.no_grad():  # one z sample per step is noisy: judge the mean of a few
        last = sum(tiny_align(x, ids, lengths, generator=g).loss.item() for _ in range(5)) / 5
    assert last < first / 4, (first, last)  # seeds 0-2 gave 16-42× when this was written


@pytest.mark.parametrize("batch", [1, 4])
def test_sample_shapes_and_ranges(tiny_align, batch):
    ids, lengths = random_captions(batch, 6, TINY_ALIGN.vocab_size)
    out = sample(tiny_align, captions=ids, lengths=lengths, generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (batch, 1, 16, 16)
    assert out.canvases.shape == (batch, TINY_ALIGN.steps, 1, 16, 16)
    assert out.windows is not None and out.windows.shape == (batch, TINY_ALIGN.steps, 4)
    assert out.canvases.min() >= 0 and out.canvases.max() <= 1
    torch.testing.assert_close(out.images, out.canvases[:, -1])


def test_word_values_give_a_word_the_same_context_vector_in_every_caption():
    """align_values="words": keys still come from the caption's BiLSTM states, values do not depend on context."""
    torch.manual_seed(0)
    words_model = AlignDRAW(replace(TINY_ALIGN, align_values="words"))
    ids = torch.tensor([[3, 5, 7, 2], [4, 5, 9, 0]])  # word 5 at position 1 in two different captions
    lengths = torch.tensor([4, 3])
    values, keys, mask = words_model._caption(ids, lengths)
    torch.testing.assert_close(values[0, 1], values[1, 1], atol=0, rtol=0)
    torch.testing.assert_close(values[0, 1], words_model.word_values.weight[5], atol=0, rtol=0)
    assert not torch.allclose(keys[0, 1], keys[1, 1])  # where to look still reads the whole caption
    assert (values[1, 3] == 0).all() and not mask[1, 3]
    states_values, _, _ = AlignDRAW(TINY_ALIGN)._caption(ids, lengths)  # the paper's h_j: context in every word
    assert not torch.allclose(states_values[0, 1], states_values[1, 1])
    h = torch.randn(2, TINY_ALIGN.dec_size)
    s, alpha = words_model.align(keys, values, mask, h)
    torch.testing.assert_close(s, torch.einsum("bk,bkd->bd", alpha, words_model.word_values(ids)))
    out = sample(words_model, captions=ids, lengths=lengths, seeds=[0, 1])
    assert out.images.shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="align_values"):
        AlignDRAW(replace(TINY_ALIGN, align_values="embeddings"))


def test_key_blind_words_get_the_same_keys_and_alignment_but_their_own_values():
    """key_blind: captions that differ only in listed words are looked at identically and read differently."""
    torch.manual_seed(0)
    config = replace(TINY_ALIGN, align_values="words", key_blind=[5, 6])  # a list, as a JSON config gives it
    assert config.key_blind == (5, 6)
    model = AlignDRAW(config)
    ids = torch.tensor([[3, 5, 7, 2], [3, 6, 7, 2], [3, 8, 7, 2]])  # 5 and 6 listed, 8 not
    lengths = torch.tensor([4, 4, 4])
    values, keys, mask = model._caption(ids, lengths)
    torch.testing.assert_close(keys[0], keys[1], atol=0, rtol=0)
    assert not torch.allclose(keys[0], keys[2])  # an unlisted word still changes where align looks
    assert not torch.allclose(values[0, 1], values[1, 1])
    h = torch.randn(1, TINY_ALIGN.dec_size).expand(3, -1)
    _, alpha = model.align(keys, values, mask, h)
    torch.testing.assert_close(alpha[0], alpha[1], atol=0, rtol=0)
    states_values, states_keys, _ = AlignDRAW(replace(config, align_values="states"))._caption(ids, lengths)
    torch.testing.assert_close(states_keys[0], states_keys[1], atol=0, rtol=0)
    assert not torch.allclose(states_values[0, 1], states_values[1, 1])  # h_j of the real words
    _, open_keys, _ = AlignDRAW(replace(config, key_blind=()))._caption(ids, lengths)
    assert not torch.allclose(open_keys[0], open_keys[1])
    assert AlignDRAWConfig(**config.to_dict()) == config  # checkpoint.json round trip
    with pytest.raises(ValueError, match="key_blind"):
        AlignDRAW(replace(TINY_ALIGN, key_blind=(0,)))  # padding is no word


def papers_steps(model: AlignDRAW, noise, captions, lengths) -> list[tuple[torch.Tensor, ...]]:
    """The generator written from the paper's equations with torch's own cells, independently of AlignDRAW._draw:
    s_t, α_t = align(h_{t−1}) (eq. 3-5); μ_t, log σ_t = tanh(W [h_{t−1} (, s_t)] + b) (eq. 1), N(0, I) at t = 1;
    h_t = LSTM([z_t, s_t], h_{t−1}); c_t = c_{t−1} + write(h_t). -> each step's (μ_t, log σ_t, α_t, canvas)."""
    values, keys, mask = model._caption(captions, lengths)
    b, lstm = len(captions), model.generator_lstm
    cell = torch.nn.LSTMCell(lstm.input_size, lstm.hidden_size).double()
    with torch.no_grad():
        cell.weight_ih.copy_(lstm.weight[:, : lstm.input_size])
        cell.weight_hh.copy_(lstm.weight[:, lstm.input_size :])
        cell.bias_ih.copy_(lstm.bias)
        cell.bias_hh.zero_()
    h, c = model.generator_initial(b)
    canvas = model.canvas0.expand(b, -1, -1, -1)
    steps = []
    for t in range(model.steps):
        s, alpha = model.align(keys, values, mask, h)
        if t == 0:
            mu = log_sigma = torch.zeros(b, model.z_size, dtype=noise.dtype)
        else:
            reads = torch.cat([h, s], 1) if model.config.prior_context else h
            mu, log_sigma = torch.tanh(model.prior(reads)).chunk(2, 1)
        h, c = cell(torch.cat([mu + torch.exp(log_sigma) * noise[:, t], s], 1), (h, c))
        canvas = canvas + model.write(h)[0]
        steps.append((mu, log_sigma, alpha, canvas))
    return steps


@pytest.mark.parametrize("variant", [{"align_values": "words"}, {"align_values": "words", "prior_context": True},
                                     {"align_values": "words", "key_blind": (5, 6)}, {"align_values": "states"},
                                     {"align_values": "states", "prior_context": True}])
def test_the_sampler_follows_the_papers_equations_at_every_step(variant):
    """generate (W_s per vocabulary word for word values, tanh as 2σ(2x) − 1, both filterbanks in one pass) against
    the paper's equations with torch's LSTMCell and tanh: every step's prior, alignment and canvas, in float64, on
    padded captions with a repeated word."""
    torch.manual_seed(0)
    model = AlignDRAW(replace(TINY_ALIGN, **variant)).double()
    captions, lengths = random_captions(4, 7, TINY_ALIGN.vocab_size, seed=3)
    captions[0, :3], lengths[0] = 4, max(int(lengths[0]), 3)  # one word three times
    noise = torch.randn(4, model.steps, model.z_size, dtype=torch.float64)
    priors = []

    def latent(t, mu, log_sigma):
        priors.append((mu, log_sigma))
        return mu + torch.exp(log_sigma) * noise[:, t]
    with torch.no_grad():
        drawn = [(s.logits.clone(), s.alignment) for s in model._draw(captions, lengths, latent)]
        expected = papers_steps(model, noise, captions, lengths)
    for (mu, log_sigma), (canvas, alpha), (mu_, log_sigma_, alpha_, canvas_) in zip(priors, drawn, expected,
                                                                                       strict=True):
        for got, want in [(mu, mu_), (log_sigma, log_sigma_), (alpha, alpha_), (canvas, canvas_)]:
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(drawn[-1][0], drawn[0][0]) and priors[-1][0].abs().max() > 0  # the check can fail


@pytest.mark.parametrize("variant", [{"align_values": "words", "key_blind": (5, 6)}, {"align_values": "states"},
                                     {"align_values": "words", "prior_context": True}])
def test_decode_of_the_posterior_means_redraws_the_reconstruction_of_the_bound(variant):
    """decode (the generator from given latents) and posterior_means (q's means fed back) retrace forward at ε = 0.

    In float64, so the generator's split input map (W_s applied per word, not per step: AlignDRAW._draw) must give
    forward's sums to rounding, for both kinds of align values and with the prior reading s_t.
    """
    torch.manual_seed(0)
    model = AlignDRAW(replace(TINY_ALIGN, **variant)).double()
    x = block_images(3, TINY_ALIGN.height, TINY_ALIGN.width).double()
    captions, lengths = random_captions(3, 6, TINY_ALIGN.vocab_size)
    z = model.posterior_means(x, captions, lengths)
    assert z.shape == (3, model.steps, model.z_size)
    at_the_means = model(x, captions, lengths, noise=torch.zeros_like(z))
    redrawn = bernoulli_nll(model.decode(z, captions, lengths), x)
    torch.testing.assert_close(redrawn, at_the_means.reconstruction, rtol=1e-12, atol=0)
    other = model(x, captions, lengths, noise=torch.ones_like(z)).reconstruction  # the check can fail
    assert not torch.allclose(redrawn, other)
