"""alignDRAW: DRAW conditioned on a caption through soft attention over its words (Mansimov et al. 2016, §3).

Per step: s_t = align(h^gen_{t−1}, h^lang) (eq. 3-5); prior p(z_t | Z_<t) = N(μ_t, σ_t) from h^gen_{t−1} (eq. 1);
h^gen_t = LSTM^gen([z_t, s_t]); c_t = c_{t−1} + write(h^gen_t). The inference network is DRAW's: the caption
reaches q only through h^gen_{t−1}.

`align_values="words"` (ours, not the paper's) keeps the BiLSTM states as align's keys but takes the context s_t
from a context-free table of word vectors, separating where to look (syntax) from what is read there (semantics)
as Russin et al. (2019) do for compositional generalisation: a held-out caption's digit word then yields the very
vector it yields in every seen caption, where the paper's h_j is new for every new caption.

`prior_context=True` (ours, not the paper's) gives the prior s_t beside h^gen_{t−1}: p(z_t | h^gen_{t−1}, s_t). s_t is
itself a function of h^gen_{t−1} and the caption, so this is still the paper's family of priors; it adds a path
from the word being read to the latent that is the same linear term in every caption, where the paper's prior
must learn each word's effect anew inside every wording's h^gen.

`key_blind=(ids...)` (ours, not the paper's) builds align's keys from the caption with every listed word read as the
first of them (e.g. all ten digits as one), while the values still see the real words: where align looks is then
the same for every digit a template is filled with, so a held-out filling is attended exactly like a seen one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from models.attention import Write
from models.draw import InitialState, Posterior, elbo_losses
from models.elbo import ELBO, bernoulli_nll
from models.family import Losses, Step
from models.gaussian import kl_diagonal, log_density, reparameterise
from models.lstm import LSTMCell, LSTMState


@dataclass(frozen=True)
class AlignDRAWConfig:
    """Defaults: the paper's MNIST-with-captions model (official `mnist-captions.json`)."""

    vocab_size: int = 23  # 22 words + padding
    height: int = 60
    width: int = 60
    channels: int = 1
    steps: int = 32  # T
    enc_size: int = 300
    dec_size: int = 300  # generator LSTM
    z_size: int = 150
    read_n: int = 8
    write_n: int = 8
    embed_size: int = 128  # word embedding; the paper's one-hot input folded into a learned table
    lang_size: int = 128  # per direction of the caption BiLSTM
    align_size: int = 512  # dimAlign of U, W and v
    align_values: str = "states"  # what s_t averages: "states" h_j (eq. 5, the paper) or "words" (module doc)
    prior_context: bool = False  # the prior also reads s_t (module doc); False is the paper's eq. 1
    key_blind: tuple[int, ...] = ()  # word ids align's keys cannot tell apart (module doc); () is the paper

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_blind", tuple(int(i) for i in self.key_blind))  # JSON gives a list

    @classmethod
    def coco(cls, vocab_size: int = 25323) -> AlignDRAWConfig:
        """The MS-COCO 32×32 model (official `coco-captions-32x32.json`)."""
        return cls(vocab_size=vocab_size, height=32, width=32, channels=3, enc_size=550, dec_size=550,
                   z_size=275, read_n=9, write_n=9)

    def to_dict(self) -> dict:
        return asdict(self)


class CaptionEncoder(nn.Module):
    """Bidirectional LSTM over the caption: h_j = [h→_j ; h←_j] (B, K, 2·lang_size), zero on padding.

    The backward LSTM reads each caption's own words in reverse (within its length), so padding never
    influences a real word's state; ids are right-padded.
    """

    def __init__(self, vocab_size: int, embed_size: int, hidden_size: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_size, padding_idx=0)
        self.forward_lstm = nn.LSTM(embed_size, hidden_size, batch_first=True)
        self.backward_lstm = nn.LSTM(embed_size, hidden_size, batch_first=True)

    def forward(self, captions: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """captions (B, K) ids, lengths (B,) -> h (B, K, 2H), mask (B, K) True on real words."""
        k = captions.shape[1]
        pos = torch.arange(k, device=captions.device)
        mask = pos < lengths[:, None]
        # Index j -> L−1−j on the real words, identity on padding: an involution, so it also undoes itself.
        flip = torch.where(mask, lengths[:, None] - 1 - pos, pos)
        e = self.embed(captions)
        h_fwd, _ = self.forward_lstm(e)  # padding comes after the words, so it cannot reach them
        e_rev = e.gather(1, flip[..., None].expand_as(e))
        h_bwd_rev, _ = self.backward_lstm(e_rev)
        h_bwd = h_bwd_rev.gather(1, flip[..., None].expand_as(h_bwd_rev))
        return torch.cat([h_fwd, h_bwd], dim=-1) * mask[..., None], mask


class Align(nn.Module):
    """e_tj = vᵀ tanh(U h_j + W h^gen_{t−1} + b); α_t = softmax over real words; s_t = Σ_j α_tj value_j, where
    value_j is h_j in the paper (eq. 3-5)."""

    def __init__(self, word_size: int, dec_size: int, align_size: int):
        super().__init__()
        self.u = nn.Linear(word_size, align_size)  # carries b
        self.w = nn.Linear(dec_size, align_size, bias=False)
        self.v = nn.Linear(align_size, 1, bias=False)

    def keys(self, words: Tensor) -> Tensor:
        """2·(U h_j + b), (B, K, A): depends on the caption only, so computed once per caption, not per step."""
        return 2 * self.u(words)

    def forward(self, keys: Tensor, values: Tensor, mask: Tensor, h_gen: Tensor) -> tuple[Tensor, Tensor]:
        """-> context s_t (B, 2H) and weights α_t (B, K), exactly 0 on padding: one step, as the tests call it (the
        model's loops build one `scorer` for all T steps)."""
        alpha = self.scorer(keys, mask)(h_gen)
        return self.context(alpha, values), alpha

    @staticmethod
    def context(alpha: Tensor, values: Tensor) -> Tensor:
        """s_t = Σ_j α_tj value_j (eq. 5): (B, K) weights over (B, K, D) values -> (B, D)."""
        return (alpha[:, None] @ values).squeeze(1)

    def scorer(self, keys: Tensor, mask: Tensor, *, reuse: bool = False) -> Callable[[Tensor], Tensor]:
        """h^gen_{t−1} ↦ α_t (B, K), with what stays the same over the T steps computed once. `reuse` keeps one
        (B, K, A) buffer for every step (sampling only: autograd keeps each step's)."""
        # vᵀ tanh(a) = 2·vᵀσ(2a) − Σv exactly; this CPU build's tanh is ~7× slower than its sigmoid and this (B, K, A)
        # pass is the sampler's largest elementwise cost. The doublings ride in W and v: 2·(W h) = (2W) h bit for bit
        # (doubling is exact barring under- and overflow).
        w2, v2, v_sum = 2 * self.w.weight, 2 * self.v.weight[0], self.v.weight.sum()
        padding = ~mask
        out = torch.empty_like(keys) if reuse else None

        def weights(h_gen: Tensor) -> Tensor:
            query = nn.functional.linear(h_gen, w2)[:, None]
            pre = torch.add(keys, query, out=out) if out is not None else keys + query
            return torch.softmax((torch.sigmoid_(pre) @ v2 - v_sum).masked_fill(padding, float("-inf")), dim=-1)
        return weights


class AlignDRAW(nn.Module):
    Config = AlignDRAWConfig
    kind = "aligndraw"
    modes = {"caption": "frames"}  # models/family.py: condition -> output
    data = "captioned_images"
    likelihood = True
    train_defaults = {"optimizer": "rmsprop", "kl_warmup": 0}  # the official code's RMSprop, no warm-up
    optimizer_options: dict = {}
    key_blind_ids: Tensor  # buffer: config.key_blind on the model's device

    def __init__(self, config: AlignDRAWConfig | None = None):
        super().__init__()
        self.config = c = config or AlignDRAWConfig()
        if c.align_values not in ("states", "words"):
            raise ValueError(f"align_values must be 'states' or 'words', not {c.align_values!r}")
        self.caption_encoder = CaptionEncoder(c.vocab_size, c.embed_size, c.lang_size)
        self.align = Align(2 * c.lang_size, c.dec_size, c.align_size)
        self.posterior = Posterior(dec_size=c.dec_size, enc_size=c.enc_size, z_size=c.z_size,
                                   channels=c.channels, height=c.height, width=c.width, read_n=c.read_n)
        # μ_t, log σ_t = tanh(W h^gen_{t−1} + b) (eq. 1), or tanh(W [h^gen_{t−1}, s_t] + b) with prior_context
        self.prior = nn.Linear(c.dec_size + (2 * c.lang_size if c.prior_context else 0), 2 * c.z_size)
        self.generator_lstm = LSTMCell(c.z_size + 2 * c.lang_size, c.dec_size)
        self.generator_initial = InitialState(c.dec_size)
        self.write = Write(c.dec_size, c.channels, c.height, c.width, c.write_n)
        self.canvas0 = nn.Parameter(torch.zeros(c.channels, c.height, c.width))
        self.word_values: nn.Embedding | None = None
        if c.align_values == "words":
            self.word_values = nn.Embedding(c.vocab_size, 2 * c.lang_size, padding_idx=0)
            nn.init.normal_(self.word_values.weight[1:], std=0.1)  # on the scale of LSTM states, not N(0, 1)
        if any(not 0 < i < c.vocab_size for i in c.key_blind):
            raise ValueError(f"key_blind ids must be words of the vocabulary (1..{c.vocab_size - 1}): {c.key_blind}")
        self.register_buffer("key_blind_ids", torch.tensor(c.key_blind, dtype=torch.long), persistent=False)

    @property
    def steps(self) -> int:
        return self.config.steps

    @property
    def z_size(self) -> int:
        return self.config.z_size

    def noise_shape(self) -> tuple[int, ...]:
        return (self.steps, self.z_size)

    loss_noise_shape = noise_shape

    def loss(self, batch: Mapping[str, Tensor], noise: Tensor, *, kl_weight: float = 1.0) -> Losses:
        return elbo_losses(self(batch["x"], batch["captions"], batch["lengths"], noise=noise), kl_weight)

    def log_weight(self, batch: Mapping[str, Tensor], noise: Tensor) -> Tensor:
        return self(batch["x"], batch["captions"], batch["lengths"], noise=noise).log_weight

    def _prior_fn(self) -> Callable[[int, Tensor, Tensor | None], tuple[Tensor, Tensor]]:
        """(t, h^gen_{t−1}, s_t) ↦ μ_t, log σ_t of p(z_t | Z_<t); s_t is read only with prior_context (None may stand
        for it otherwise). tanh(W h + b) = 2σ((2W) h + 2b) − 1, the inner doubling in the weights, once a call."""
        w2, b2 = 2 * self.prior.weight, 2 * self.prior.bias

        def prior(t: int, h_gen: Tensor, s: Tensor | None) -> tuple[Tensor, Tensor]:
            if t == 0:  # N(0, I) at the first step, as in the official code
                zeros = h_gen.new_zeros(h_gen.shape[0], self.z_size)
                return zeros, zeros
            if self.config.prior_context:
                assert s is not None, "prior_context needs s_t"
                h_gen = torch.cat([h_gen, s], 1)
            mu, log_sigma = (2 * torch.sigmoid(nn.functional.linear(h_gen, w2, b2)) - 1).chunk(2, dim=1)
            return mu, log_sigma
        return prior

    def _caption(self, captions: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """-> align's values (B, K, 2H), keys (B, K, A) and the real-word mask (B, K)."""
        blind = self.config.key_blind
        key_ids = captions.masked_fill(torch.isin(captions, self.key_blind_ids), blind[0]) if blind else captions
        states, mask = self.caption_encoder(key_ids, lengths)
        if self.word_values is not None:
            values = self.word_values(captions) * mask[..., None]
        else:  # the paper's h_j, of the real words: a second BiLSTM pass only where the keys were blinded
            values = self.caption_encoder(captions, lengths)[0] if blind else states
        return values, self.align.keys(states), mask

    def forward(self, x: Tensor, captions: Tensor, lengths: Tensor, *,
                generator: torch.Generator | None = None, noise: Tensor | None = None) -> ELBO:
        """x (B, C, H, W) in [0, 1], captions (B, K), lengths (B,) -> the ELBO's terms against the learned prior.

        ε (B, T, Z) comes from `noise` when given, else `generator`.
        """
        if noise is None:
            noise = torch.randn(x.shape[0], self.steps, self.z_size, generator=generator)
        return self._infer(x, captions, lengths, noise.to(x.device))[0]

    def posterior_means(self, x: Tensor, captions: Tensor, lengths: Tensor) -> Tensor:
        """(B, T, Z) the means of q(z_t | x, z_<t) along the path that feeds them back: latents that redraw x
        through `decode`, to probe what the latents carry beside the caption."""
        return self._infer(x, captions, lengths, x.new_zeros(x.shape[0], self.steps, self.z_size))[1]

    def _infer(self, x: Tensor, captions: Tensor, lengths: Tensor, eps: Tensor) -> tuple[ELBO, Tensor]:
        b = x.shape[0]
        values, keys, mask = self._caption(captions, lengths)
        h_gen, c_gen = self.generator_initial(b)
        enc_state: LSTMState = self.posterior.initial(b)
        canvas = self.canvas0.expand(b, -1, -1, -1)
        kls, log_ratios, zs = [], [], []
        align, prior = self.align.scorer(keys, mask), self._prior_fn()
        for t in range(self.steps):
            mu_q, log_sigma_q, enc_state = self.posterior(x, canvas, h_gen, enc_state)
            s = self.align.context(align(h_gen), values)
            mu_p, log_sigma_p = prior(t, h_gen, s)
            z = reparameterise(mu_q, log_sigma_q, eps[:, t])
            kls.append(kl_diagonal(mu_q, log_sigma_q, mu_p, log_sigma_p))
            log_ratios.append(log_density(z, mu_q, log_sigma_q) - log_density(z, mu_p, log_sigma_p))
            zs.append(z)
            h_gen, c_gen = self.generator_lstm(torch.cat([z, s], dim=1), (h_gen, c_gen))
            canvas = canvas + self.write(h_gen)[0]
        elbo = ELBO(bernoulli_nll(canvas, x), torch.stack(kls, 1), torch.stack(log_ratios, 1))
        return elbo, torch.stack(zs, 1)

    def generate(self, noise: Tensor, captions: Tensor, lengths: Tensor) -> Iterator[Step]:
        """z_t ~ p(z_t | Z_<t) = μ_t + σ_t ε_t: noise (B, T, Z), captions (B, K), lengths (B,)."""
        return self._draw(captions, lengths, lambda t, mu, log_sigma: reparameterise(mu, log_sigma, noise[:, t]))

    def decode(self, z: Tensor, captions: Tensor, lengths: Tensor) -> Tensor:
        """c_T (B, C, H, W) logits drawn from the given latents z (B, T, Z) in place of the prior's samples."""
        *_, last = self._draw(captions, lengths, lambda t, mu, log_sigma: z[:, t])
        assert last.logits is not None
        return last.logits

    def _generator_gates(self, captions: Tensor, values: Tensor
                         ) -> Callable[[Tensor, Tensor | None, Tensor, Tensor], Tensor]:
        """(α_t, s_t or None, z_t, h^gen_{t−1}) ↦ the generator LSTM's gates W [z_t, s_t, h] + b, g's doubled (for
        `update(…, g_doubled=True)`), where s_t = Σ_j α_tj value_j (eq. 5) is computed here unless the caller has it
        already (prior_context).

        With context-free values (`align_values="words"`) from a vocabulary smaller than s_t is wide, summed as
        W_z z_t + W_h h + (W_s s_t + b) where W_s s_t = Σ_v (Σ_{j: w_j = v} α_tj) (W_s value_v): W_s meets each
        vocabulary word once a call, not s_t once a step, so a step's LSTM matmuls take V + Z + dec inputs where
        they took 2·lang_size + Z + dec (a third fewer FLOPs on MNIST with Captions: 473 against 706). The same
        sums in another order: values move in their last float bits. The paper's h_j differ per caption, and
        W_s h_j (B, K, 4·dec) once a call cost about what it saved at K = 12 words against T = 32 steps (measured
        at batch 256), so they keep the one matmul over [z_t, s_t, h]."""
        c, lstm = self.config, self.generator_lstm
        w, bias = lstm.doubled()  # the gates are for update(…, g_doubled=True)
        if self.word_values is None or c.vocab_size > 2 * c.lang_size:
            return lambda alpha, s, z, h: torch.addmm(
                bias, torch.cat([z, self.align.context(alpha, values) if s is None else s, h], dim=1), w.t())
        context_end = c.z_size + 2 * c.lang_size
        w_z, w_h = w[:, : c.z_size].t(), w[:, context_end:].t()
        word_gates = self.word_values.weight @ w[:, c.z_size : context_end].t()  # (V, 4·dec)
        # which vocabulary word each caption position holds: α summed per word by a matmul, in one fixed order on
        # every device (a scatter-add's atomics on CUDA would sum a repeated word's weights in varying order)
        one_hot = nn.functional.one_hot(captions, c.vocab_size).to(word_gates.dtype)  # (B, K, V)

        def gates(alpha: Tensor, s: Tensor | None, z: Tensor, h: Tensor) -> Tensor:  # s_t is not needed here
            per_word = (alpha[:, None] @ one_hot).squeeze(1)
            return torch.addmm(bias, per_word, word_gates).addmm_(z, w_z).addmm_(h, w_h)
        return gates

    def _draw(self, captions: Tensor, lengths: Tensor,
              latent: Callable[[int, Tensor, Tensor], Tensor]) -> Iterator[Step]:
        """The generator's T steps; latent(t, μ_t, log σ_t) of the prior gives z_t."""
        b = captions.shape[0]
        values, keys, mask = self._caption(captions, lengths)
        h_gen, c_gen = self.generator_initial(b)
        # One canvas written in place and one buffer for align's (B, K, A) pass, for all T steps: a fresh tensor
        # of that size a step costs page faults on the CPU (models.family.Step says the canvas is overwritten).
        # A clone even at b = 1, where expand alone would alias the parameter c_0.
        canvas = self.canvas0.expand(b, -1, -1, -1).clone(memory_format=torch.contiguous_format)
        align = self.align.scorer(keys, mask, reuse=not torch.is_grad_enabled())
        prior, gates = self._prior_fn(), self._generator_gates(captions, values)
        for t in range(self.steps):
            alpha = align(h_gen)
            s = self.align.context(alpha, values) if self.config.prior_context else None
            z = latent(t, *prior(t, h_gen, s))
            h_gen, c_gen = self.generator_lstm.update(gates(alpha, s, z, h_gen), c_gen, g_doubled=True)
            window = self.write.add_to(canvas, h_gen)
            yield Step(logits=canvas, window=window.box() if window is not None else None, alignment=alpha)
