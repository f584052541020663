"""The text VAE (models/textvae.py): causal decoders with the stated receptive fields, the ELBO against a float64
torch.distributions recomputation, L_k (models/bounds.py) above the ELBO and rising with k, objective-only free bits
and warm-up, padding invariance, reproducible decoding, and the I_q and active-unit diagnostics."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal, kl_divergence

from models.bounds import importance_weighted, log_mean_exp, log_weights
from models.textvae import (
    BOS,
    EOS,
    PAD,
    PRESETS,
    UNK,
    TextVAE,
    TextVAEConfig,
    aggregate_mutual_information,
    receptive_field,
)

V, Z = 23, 4


def tiny(decoder: str = "cnn", preset: str = "small", **overrides) -> TextVAE:
    torch.manual_seed(0)
    fields = {"vocab_size": V, "max_length": 12, "embed": 8, "hidden": 8, "z_dim": Z, "dropout": 0.0}
    return TextVAE(TextVAEConfig(**(fields | {"decoder": decoder, "preset": preset} | overrides))).eval()


def sentences(lengths: list[int], width: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random words then <eos>, right-padded to `width` (the longest by default): the family's batch."""
    g = torch.Generator().manual_seed(seed)
    width = width or max(lengths)
    x = torch.full((len(lengths), width), PAD, dtype=torch.long)
    for i, n in enumerate(lengths):
        x[i, : n - 1] = torch.randint(UNK + 1, V, (n - 1,), generator=g)
        x[i, n - 1] = EOS
    return {"x": x, "lengths": torch.tensor(lengths)}


def noise(b: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, Z, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------------
# Causality and receptive field


def test_receptive_field_formula():
    assert {p: receptive_field(p) for p in PRESETS} == {"tiny": 7, "small": 15, "medium": 31, "large": 63,
                                                        "xlarge": 125}
    assert receptive_field([1]) == 3 and receptive_field([2, 3], kernel=5) == 21


def input_gradients(model: TextVAE, length: int, positions: list[int], rows: int = 4) -> dict[int, torch.Tensor]:
    """For each output position t: which decoder inputs (input j holds token j − 1, input 0 <bos>) the logits at t
    depend on, as the per-input gradient norm (L,) of a random projection of those logits, summed over `rows`
    random sentences (a ReLU path that happens to be dead for one sentence is alive for another)."""
    x = sentences([length] * rows)["x"]
    z = noise(rows)
    inputs = model.embed_inputs(x).detach().requires_grad_(True)
    logits = model.output(model.decoder_states(inputs, z))  # (rows, L, V)
    r = torch.randn(V, generator=torch.Generator().manual_seed(2))
    grads = {}
    for t in positions:
        (g,) = torch.autograd.grad((logits[:, t] @ r).sum(), inputs, retain_graph=True)
        grads[t] = g.norm(dim=-1).sum(0)
    return grads


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_cnn_logits_see_exactly_the_receptive_field_of_earlier_tokens(preset):
    # Breaking it, tried: a centred (non-causal) padding in ResidualBlock fails the "zero after t" check; a stack
    # with one block too many fails the extent check for every preset.
    model = tiny("cnn", preset, hidden=32)
    r = receptive_field(preset)
    length = r + 6
    for t, g in input_gradients(model, length, [0, 1, r // 2, r - 2, r - 1, r, length - 1]).items():
        seen = (g > 0).nonzero().flatten().tolist()
        assert seen == list(range(max(0, t - r + 1), t + 1)), (t, seen)  # inputs t−R+1..t: tokens t−R..t−1


@pytest.mark.parametrize(("decoder", "preset"), [("cnn", p) for p in sorted(PRESETS)] + [("lstm", "small"),
                                                                                       ("lm", "small")])
def test_the_logits_for_token_t_change_with_earlier_tokens_only(decoder, preset):
    # In token space, through next_token_logits (the training path): the gradient tests below work on the
    # decoder's inputs, where the <bos> shift is invisible. Breaking it, tried: feeding x unshifted fails here.
    model = tiny(decoder, preset, hidden=32)
    r = model.receptive_field or 10**9
    length = min(r, 40) + 6
    x = sentences([length] * 4)["x"]
    z = noise(4) if model.latent else None
    logits = model.next_token_logits(x, z)
    for s in [0, 1, length // 2, length - 2]:  # change token s in every row
        changed = x.clone()
        changed[:, s] = UNK + 1 + (x[:, s] - UNK) % (V - UNK - 1)  # another word
        moved = (model.next_token_logits(changed, z) - logits)[..., EOS:].abs().amax(dim=(0, 2))  # (L,); padding
        # and <bos> are −∞ everywhere
        assert (moved[: s + 1] == 0).all(), (s, moved)  # logits t ≤ s predict tokens ≤ s: blind to token s
        assert (moved[s + 1 : s + 1 + r] > 0).all() and (moved[s + 1 + r :] == 0).all(), (s, moved)


@pytest.mark.parametrize("decoder", ["lstm", "lm"])
def test_lstm_logits_see_every_earlier_token_and_no_later_one(decoder):
    model = tiny(decoder)
    length = 20
    for t, g in input_gradients(model, length, [0, 1, 7, length - 1]).items():
        assert (g[t + 1 :] == 0).all() and (g[: t + 1] > 0).all(), (t, g)


# ---------------------------------------------------------------------------------------------------------------
# The ELBO and L_k


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("decoder", ["cnn", "lstm", "lm"])
def test_elbo_terms_match_torch_distributions_in_float64(decoder, tied):
    # Breaking it, tried: counting the padding positions in the reconstruction, or a KL without the −log σ term,
    # each fails by whole nats.
    model = tiny(decoder, tie_weights=tied)
    batch = sentences([3, 7, 5, 1])
    eps = noise(4)
    losses = model.loss(batch, eps)
    log_w = model.log_weight(batch, eps)

    ref = tiny(decoder, tie_weights=tied).double()
    x, lengths = batch["x"], batch["lengths"]
    mask = torch.arange(x.shape[1]) < lengths[:, None]
    with torch.no_grad():
        if decoder == "lm":
            z, kl, log_ratio = None, torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
        else:
            mu, log_sigma = ref.posterior_params(x, lengths)
            q = Independent(Normal(mu, log_sigma.exp()), 1)
            p = Independent(Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
            z = mu + log_sigma.exp() * eps.double()
            kl = kl_divergence(q, p)
            log_ratio = q.log_prob(z) - p.log_prob(z)
        log_px = torch.where(mask, Categorical(logits=ref.next_token_logits(x, z)).log_prob(x), 0).sum(1)
    assert torch.allclose(losses.terms["reconstruction"].double(), -log_px, rtol=1e-5)
    assert torch.allclose(losses.terms["kl"].double(), kl, rtol=1e-5, atol=1e-6)
    assert torch.allclose(losses.bound.double(), -log_px + kl, rtol=1e-5)
    assert torch.allclose(log_w.double(), log_px - log_ratio, rtol=1e-5)
    assert torch.allclose(losses.log_weight.double(), log_px - log_ratio, rtol=1e-5)
    assert torch.allclose(losses.minimise["model"].double(), (-log_px + kl).mean(), rtol=1e-5)


def test_the_mean_log_weight_is_the_elbo_and_lk_rises_with_k():
    # Breaking it, tried: log_weight without −log q(z|x) + log p(z) (the reconstruction alone) fails it.
    model = tiny("cnn")
    batch = sentences([4, 9, 6])
    m = 2000
    log_w = log_weights(model, batch, m, generator=torch.Generator().manual_seed(3))  # (3, m) float64
    with torch.no_grad():  # −bound = one-sample reconstruction + the analytic KL: an ELBO estimate of its own
        elbos = -torch.stack([model.loss(batch, noise(3, seed=100 + i)).bound for i in range(200)]).double()
    se = torch.sqrt(log_w.var(1) / m + elbos.var(0) / 200)
    assert ((log_w.mean(1) - elbos.mean(0)).abs() < 4 * se).all()  # E_q log w is the ELBO
    # E[L_k] rises with k: each k from a pool of its own (groups nested in one pool would rise whatever the weights)
    means, ses = [], []
    for k, seed in ((1, 3), (5, 5), (50, 6), (400, 7)):
        pool = log_w if k == 1 else log_weights(model, batch, m, generator=torch.Generator().manual_seed(seed))
        lk = log_mean_exp(pool.view(3, m // k, k), dim=2)  # m/k independent L_k draws per sentence
        means.append(lk.mean(1))
        ses.append(lk.std(1) / math.sqrt(m // k))
    for (a, sa), (b, sb) in zip(zip(means, ses, strict=True), zip(means[1:], ses[1:], strict=True), strict=False):
        assert (b >= a - 3 * torch.sqrt(sa**2 + sb**2)).all()
    assert (means[-1] > means[0] + 3 * torch.sqrt(ses[0] ** 2 + ses[-1] ** 2)).all()  # a real gap on an untrained q


def test_lm_importance_weighted_bound_is_its_exact_nll_for_every_k():
    model = tiny("lm")
    batch = sentences([4, 9, 6])
    with torch.no_grad():
        nll = model.loss(batch, noise(3)).bound.double()
    for k in (1, 7, 100):
        lk, mean = importance_weighted(model, batch, k, generator=torch.Generator().manual_seed(k))
        assert torch.allclose(-lk, nll, rtol=1e-12, atol=1e-9) and torch.allclose(-mean, nll, rtol=1e-12)


def test_free_bits_and_warm_up_change_only_the_objective():
    # Breaking it, tried: adding the free-bits floor to `bound` fails the first assertion.
    batch, eps = sentences([3, 7, 5, 2]), noise(4)
    base = tiny("cnn").loss(batch, eps)
    lam = 0.5
    shaped = tiny("cnn", free_bits=lam)
    for weight in (1.0, 0.3):
        out = shaped.loss(batch, eps, kl_weight=weight)
        assert torch.equal(out.bound, base.bound) and torch.equal(out.log_weight, base.log_weight)
        assert all(torch.equal(out.terms[k], base.terms[k]) for k in base.terms)
        x, lengths = batch["x"], batch["lengths"]
        mu, log_sigma = shaped.posterior_params(x, lengths)
        kl_d = 0.5 * (mu**2 + (2 * log_sigma).exp() - 2 * log_sigma - 1)  # (B, Z)
        expected = base.terms["reconstruction"].mean() + weight * kl_d.mean(0).clamp_min(lam).sum()
        assert torch.allclose(out.minimise["model"], expected, rtol=1e-6)
        if weight == 1:
            assert out.minimise["model"] > base.minimise["model"]  # the floor binds on this untrained q
    warm = tiny("cnn").loss(batch, eps, kl_weight=0.25)
    assert torch.equal(warm.bound, base.bound)
    expected = (base.terms["reconstruction"] + 0.25 * base.terms["kl"]).mean()
    assert torch.allclose(warm.minimise["model"], expected)


@pytest.mark.parametrize("decoder", ["cnn", "lstm", "lm"])
def test_a_sentence_bound_is_the_same_alone_and_padded_in_a_batch(decoder):
    # Breaking it, tried: the encoder reading the state at the last column instead of lengths − 1 fails it.
    model = tiny(decoder)
    batch = sentences([5, 11, 8])
    eps = noise(3)
    together = model.loss(batch, eps).bound
    for i, n in enumerate([5, 11, 8]):
        alone = {"x": batch["x"][i : i + 1, :n], "lengths": batch["lengths"][i : i + 1]}
        assert torch.allclose(model.loss(alone, eps[i : i + 1]).bound, together[i : i + 1], rtol=1e-5, atol=1e-5)


def test_word_dropout_replaces_decoder_words_by_unk_in_training_only():
    model = tiny("cnn", word_dropout=1.0)
    x = sentences([4, 6])["x"]
    model.train()
    all_unk = torch.where(x[:, :-1] == PAD, PAD, UNK)
    expected = model.decoder_embedding(torch.cat([torch.full_like(x[:, :1], BOS), all_unk], 1))
    assert torch.equal(model.embed_inputs(x), expected)
    model.eval()
    assert not torch.equal(model.embed_inputs(x), expected)


@pytest.mark.parametrize("decoder", ["cnn", "lstm", "lm"])
def test_tied_weights_read_and_write_words_with_one_matrix(decoder):
    model = tiny(decoder, tie_weights=True)
    assert not hasattr(model, "output") and "output_bias" in dict(model.named_parameters())
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in tiny(decoder).parameters()) - V * 8  # the (vocab, hidden) projection weight is gone
    embedding = model.decoder_embedding.weight
    assert torch.equal(embedding[PAD], torch.zeros(8))
    batch = sentences([3, 5])
    x, z = batch["x"], (noise(2) if model.latent else None)
    states = model.decoder_states(model.embed_inputs(x), z)
    by_hand = states @ embedding.T + model.output_bias
    logits = model.next_token_logits(x, z)
    words = torch.ones(V, dtype=torch.bool).index_fill_(0, torch.tensor([PAD, BOS]), False)
    assert torch.allclose(logits[..., words], by_hand[..., words], atol=1e-6)
    assert torch.isneginf(logits[..., ~words]).all()
    # one matrix: the rows of words absent from the batch learn through the softmax, which an untied input
    # embedding's rows never do
    absent = sorted(set(range(EOS, V)) - set(x.flatten().tolist()))
    for tie in (True, False):
        m = tiny(decoder, tie_weights=tie)
        m.loss(batch, noise(2)).minimise["model"].backward()
        grads = m.decoder_embedding.weight.grad[absent].abs().sum(1)
        assert absent and ((grads > 0).all() if tie else (grads == 0).all())
    with pytest.raises(ValueError, match="embed == hidden"):
        TextVAEConfig(embed=8, hidden=16, tie_weights=True)


def test_output_dropout_acts_in_training_only():
    plain, dropped = tiny("cnn"), tiny("cnn", dropout_out=0.5)  # same seed: the same weights
    batch, eps = sentences([4, 6, 2]), noise(3)
    assert torch.equal(plain.loss(batch, eps).bound, dropped.loss(batch, eps).bound)  # eval mode: no dropout
    dropped.train()
    torch.manual_seed(1)
    first = dropped.loss(batch, eps).bound
    torch.manual_seed(2)
    assert not torch.equal(first, dropped.loss(batch, eps).bound)


# ---------------------------------------------------------------------------------------------------------------
# Decoding


def check_layout(tokens: torch.Tensor, limit: int) -> None:
    """Each row: words (never padding or <bos>), then <eos> and padding, or `limit` words and no <eos>."""
    assert tokens.dtype == torch.long and tokens.shape[1] <= limit
    for row in tokens.tolist():
        n = row.index(EOS) + 1 if EOS in row else len(row)
        assert all(t > EOS for t in row[: n - 1]) and all(t == PAD for t in row[n:])
        assert EOS in row or len(row) == limit


def total_log_prob(model: TextVAE, tokens: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(tokens | z) by teacher forcing, each row up to its <eos> (or all of it, if truncated): (B,)."""
    n = torch.tensor([row.index(EOS) + 1 if EOS in row else len(row) for row in tokens.tolist()])
    mask = torch.arange(tokens.shape[1]) < n[:, None]
    with torch.no_grad():
        lp = torch.log_softmax(model.next_token_logits(tokens, z if model.latent else None), -1)
    return torch.where(mask, lp.gather(-1, tokens[..., None])[..., 0], 0).sum(1)


@pytest.mark.parametrize(("decoder", "preset"), [("cnn", "small"), ("cnn", "medium"), ("lstm", "small"),
                                                  ("lm", "small")])
def test_the_decoding_step_gives_the_teacher_forced_logits(decoder, preset):
    # Breaking it, tried: the CNN step keeping receptive_field − 1 inputs fails it (small preset).
    model = tiny(decoder, preset)
    x = sentences([45, 30])["x"]
    z = noise(2)
    with torch.no_grad():
        forced = model.next_token_logits(x, z if model.latent else None)
        state, token = model._start(z), torch.full((2,), BOS)
        for t in range(x.shape[1]):
            logits, state = model._step(state, token, z)
            assert torch.allclose(logits[:, EOS:], forced[:, t, EOS:], atol=1e-5), t
            token = x[:, t]


@pytest.mark.parametrize("decoder", ["cnn", "lstm", "lm"])
def test_decoding_is_reproducible_and_consistent_with_teacher_forcing(decoder):
    model = tiny(decoder, preset="small", max_length=40)  # past the CNN's receptive field, 15
    z = noise(6)
    a = model.decode(z, generator=torch.Generator().manual_seed(7), temperature=0.8)
    b = model.decode(z, generator=torch.Generator().manual_seed(7), temperature=0.8)
    c = model.decode(z, generator=torch.Generator().manual_seed(8), temperature=0.8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = model.decode(z, strategy="greedy")
    assert torch.equal(greedy, model.decode(z, strategy="greedy"))
    assert torch.equal(model.decode(z, strategy="beam", beam=1), greedy)
    for tokens in (a, c, greedy, model.decode(z, strategy="beam", beam=4)):
        check_layout(tokens, 40)
    # greedy = the argmax of the teacher-forced logits on its own output, at every real position
    lengths = torch.tensor([row.index(EOS) + 1 if EOS in row else len(row) for row in greedy.tolist()])
    with torch.no_grad():
        forced = model.next_token_logits(greedy, z if model.latent else None).argmax(-1)
    mask = torch.arange(greedy.shape[1]) < lengths[:, None]
    assert torch.equal(forced[mask], greedy[mask])


@pytest.mark.parametrize("decoder", ["cnn", "lstm"])
def test_a_beam_as_wide_as_the_vocabulary_finds_the_best_two_token_sentence(decoder):
    # Breaking it, tried: ranking the beams by their last token's log-probability instead of the total fails it.
    model = tiny(decoder)
    z = noise(2)
    words = [w for w in range(V) if w not in (PAD, BOS, EOS)]
    every = [[EOS, PAD]] + [[w, w2] for w in words for w2 in [EOS, *words]]  # all sentences of at most 2 tokens
    candidates = torch.tensor(every)
    for i in range(2):
        scores = total_log_prob(model, candidates, z[i : i + 1].expand(len(every), -1))
        best = model.decode(z[i : i + 1], strategy="beam", beam=V, max_length=2)
        padded = torch.nn.functional.pad(best, (0, 2 - best.shape[1]))
        assert padded[0].tolist() == every[int(scores.argmax())]


def test_generate_decodes_the_prior_sample_or_the_posterior_mean():
    model = tiny("cnn")
    batch = sentences([4, 7])
    z = noise(2)
    (step,) = list(model.generate(z))
    assert torch.equal(step.tokens, model.decode(z, strategy="greedy")) and step.logits is None
    (step,) = list(model.generate(z, texts=batch["x"], lengths=batch["lengths"]))
    means = model.encode_noise(batch["x"], batch["lengths"])
    assert means.shape == (2, Z) and torch.equal(step.tokens, model.decode(means, strategy="greedy"))
    with pytest.raises(ValueError, match="captions"):
        model.generate(z, captions=batch["x"])


# ---------------------------------------------------------------------------------------------------------------
# Diagnostics


def test_mutual_information_matches_the_aggregate_posterior_in_float64():
    # Breaking it, tried: a log-sum-exp without the −log N makes it differ by log N.
    g = torch.Generator().manual_seed(5)
    n, z_dim = 16, 3
    mu, log_sigma, eps = (torch.randn(n, z_dim, generator=g, dtype=torch.float64) for _ in range(3))
    log_sigma = log_sigma * 0.3
    got = aggregate_mutual_information(mu, log_sigma, eps)
    z = mu + log_sigma.exp() * eps
    q = Independent(Normal(mu, log_sigma.exp()), 1)
    aggregate = MixtureSameFamily(Categorical(logits=torch.zeros(n, dtype=torch.float64)), q)
    expected = (-q.entropy() - aggregate.log_prob(z)).mean()
    assert torch.allclose(got, expected, rtol=1e-10)
    # far-apart narrow posteriors carry log N nats; identical ones none (up to Monte Carlo noise)
    far = aggregate_mutual_information(torch.arange(n, dtype=torch.float64)[:, None] * 100, log_sigma[:, :1] * 0,
                                       eps[:, :1])
    own = (0.5 * (eps[:, 0] ** 2 - 1)).mean()  # −H − log q(z_n | x_n) at σ = 1: the Monte Carlo part that remains
    assert far.item() == pytest.approx(math.log(n) + own.item(), abs=1e-9)
    same = aggregate_mutual_information(torch.zeros(4000, 2), torch.zeros(4000, 2),
                                        torch.randn(4000, 2, generator=g))
    assert abs(same.item()) < 0.05


def test_model_diagnostics_mutual_information_and_active_units():
    model = tiny("cnn")
    batch = sentences([3, 5, 8, 4, 6, 7, 2, 9], seed=3)
    with torch.no_grad():
        model.posterior.weight[1].zero_()  # unit 1's mean is its bias for every sentence: inactive
        model.posterior.weight[:Z] *= 20  # the others vary well above the 0.01 threshold
    (count,), (variances,) = model.active_units(batch["x"], batch["lengths"], batch_size=3)
    assert variances[1] == 0 and count == Z - 1 and (variances[[0, 2, 3]] > 0.01).all()
    x, lengths = batch["x"], batch["lengths"]
    g = torch.Generator().manual_seed(6)
    whole = model.mutual_information(x, lengths, generator=g)
    mu, log_sigma = model.posterior_params(x, lengths)
    eps = torch.randn(8, Z, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    assert whole == pytest.approx(aggregate_mutual_information(mu, log_sigma, eps).item(), rel=1e-6)
    assert 0 < whole <= math.log(8)
    halves = model.mutual_information(x, lengths, batch_size=4, generator=torch.Generator().manual_seed(6))
    expected = sum(aggregate_mutual_information(mu[s], log_sigma[s], eps[s]).item() for s in (slice(0, 4),
                                                                                              slice(4, 8))) / 2
    assert halves == pytest.approx(expected, rel=1e-6)
    lm = tiny("lm")
    assert lm.mutual_information(x, lengths) == 0 and lm.active_units(x, lengths)[0] == (0,)
