"""Text VAE with a dilated-CNN decoder (Yang, Hu, Salakhutdinov & Berg-Kirkpatrick, ICML 2017, arXiv 1702.08139).

Generative model p(x, z) = p(z) Π_t p(x_t | x_<t, z) with p(z) = N(0, I) and a softmax over the vocabulary at each
position; recognition model q(z | x) = N(μ(x), σ(x)²), μ and log σ a linear map of an LSTM's state at the sentence's
last token. The decoder is a stack of residual blocks of causal dilated 1-D convolutions (one block per dilation,
kernel 3) whose receptive field 1 + Σ (k − 1)·d sets how much left context it sees: the paper's claim is that a
small enough context keeps z in use where an LSTM decoder (unbounded context) lets the KL collapse to 0. An LSTM
decoder of the same width ("lstm") and the matched LSTM language model without z ("lm") are the baselines.

Token conventions (training/data/ptb.py builds them): id 0 padding, 1 <bos>, 2 <eos>, 3 <unk>, words from 4. A
sentence is its words then <eos>, right-padded with 0; `lengths` counts the words and the <eos>, never <bos>, which
is only the decoder's first input (inputs [<bos>, x_1, ..., x_{n−1}] predict [x_1, ..., x_n = <eos>]). So Σ lengths is
the perplexity denominator: Σ (words + 1) per sentence.

z enters every decoder position concatenated to the input embedding (the paper's choice), for "cnn" and "lstm".

Batches: batch["x"] (B, L) long token ids (the data, under the key every family and the trainer use) and
batch["lengths"] (B,). ε layout: one vector (z_dim,) per sentence, z = μ + σ ⊙ ε; "lm" takes and ignores the same ε.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.bounds import log_mean_exp
from models.family import Losses, Step
from models.gaussian import kl_standard_normal, log_density, log_standard_density, reparameterise

PAD, BOS, EOS, UNK = 0, 1, 2, 3  # reserved ids; models.vocab.Vocabulary keeps 0 for its own <pad>
SPECIALS = ("<bos>", "<eos>", "<unk>")  # the words at ids 1, 2, 3 of a text vocabulary (after padding)
KERNEL = 3  # the paper's convolution width
# Named decoders by receptive field (one residual block per dilation); the paper's SCNN..VLCNN schedules are
# unconfirmed (papers.md §7.2), these follow its doubling pattern. PTB sentences average 21 words, 82 at most.
PRESETS: dict[str, tuple[int, ...]] = {
    "tiny": (1, 2),  # receptive field 7: shorter than a caption (12 words + <eos>), so the words must come from z
    "small": (1, 2, 4),  # receptive field 15
    "medium": (1, 2, 4, 8),  # 31
    "large": (1, 2, 4, 8, 16),  # 63
    "xlarge": (1, 2, 4, 8, 16, 1, 2, 4, 8, 16),  # 125: longer than any PTB sentence, the LSTM's regime
}
DECODERS = ("cnn", "lstm", "lm")
STRATEGIES = ("sample", "greedy", "beam")


def receptive_field(preset: str | Sequence[int], kernel: int = KERNEL) -> int:
    """Input positions one output of the causal stack sees, itself included: 1 + Σ_blocks (kernel − 1)·dilation."""
    dilations = PRESETS[preset] if isinstance(preset, str) else preset
    return 1 + sum((kernel - 1) * d for d in dilations)


@dataclass(frozen=True)
class TextVAEConfig:
    """Defaults: the PTB protocol of papers.md's 2026-12 addendum (z 32; embedding, encoder, decoder 256)."""

    vocab_size: int = 10_002  # PTB: 9,999 training words (incl. <unk>) + <eos>, <bos> and padding
    max_length: int = 83  # tokens incl. <eos> that decode emits at most: PTB's longest sentence (82 words) + 1
    embed: int = 256
    hidden: int = 256  # encoder LSTM units and decoder channels (LSTM units for "lstm"/"lm")
    z_dim: int = 32
    dropout: float = 0.5  # on the decoder's input embeddings (the lagging-encoder code's dropout_in)
    dropout_out: float = 0.0  # on the decoder's top features before the vocabulary (that code's dropout_out)
    tie_weights: bool = False  # the vocabulary projection is the decoder embedding (Press & Wolf 2017); embed == hidden
    word_dropout: float = 0.0  # share of decoder input words replaced by <unk> in training (Bowman et al. 2016)
    free_bits: float = 0.0  # λ nats: the objective's KL is Σ_d max(λ, batch-mean KL_d) (Kingma et al. 2016)
    decoder: str = "cnn"  # "cnn" (dilated), "lstm", or "lm" (the matched LSTM language model: no z, KL 0)
    preset: str = "medium"  # the CNN's dilations (PRESETS); unused by "lstm" and "lm"

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if self.vocab_size <= UNK or self.max_length < 1:
            raise ValueError(f"need vocab_size > {UNK} (the reserved ids) and max_length >= 1")
        if not (0 <= self.dropout < 1 and 0 <= self.dropout_out < 1 and 0 <= self.word_dropout <= 1
                and self.free_bits >= 0):
            raise ValueError("need 0 <= dropout, dropout_out < 1, 0 <= word_dropout <= 1 and free_bits >= 0")
        if self.tie_weights and self.embed != self.hidden:
            raise ValueError(f"tie_weights needs embed == hidden, got {self.embed} and {self.hidden}")
        if self.decoder == "cnn" and self.hidden % 2:
            raise ValueError(f"the CNN's bottleneck blocks halve the channels: hidden must be even, got {self.hidden}")

    def to_dict(self) -> dict:
        return asdict(self)


class ResidualBlock(nn.Module):
    """h + W_3 ReLU(conv_d(ReLU(W_1 ReLU(h)))): ByteNet's bottleneck block (Kalchbrenner et al. 2016), which the
    paper builds on (its exact block is unconfirmed). The dilated convolution is causal: left padding only."""

    def __init__(self, channels: int, dilation: int, kernel: int = KERNEL):
        super().__init__()
        inner = channels // 2
        self.reduce = nn.Conv1d(channels, inner, 1)
        self.conv = nn.Conv1d(inner, inner, kernel, dilation=dilation)
        self.expand = nn.Conv1d(inner, channels, 1)
        self.left = (kernel - 1) * dilation

    def forward(self, h: Tensor) -> Tensor:
        """h (B, C, L) -> (B, C, L); output t sees inputs t − left .. t."""
        y = self.reduce(F.relu(h))
        y = self.conv(F.pad(F.relu(y), (self.left, 0)))
        return h + self.expand(F.relu(y))


def aggregate_mutual_information(mu: Tensor, log_sigma: Tensor, eps: Tensor) -> Tensor:
    """I_q = E_x KL(q(z|x) ‖ q(z)) with q(z) = (1/N) Σ_m q(z | x_m) over the N rows given (He et al. 2019's
    `calc_mi`): (1/N) Σ_n [−H(q(z|x_n)) − log (1/N) Σ_m q(z_n | x_m)] with z_n = μ_n + σ_n ε_n, one sample per
    row, the entropy in closed form. μ, log σ, ε: (N, Z) -> a float64 scalar in nats, at most log N.
    """
    mu, log_sigma, eps = mu.double(), log_sigma.double(), eps.double()
    z = reparameterise(mu, log_sigma, eps)
    z_dim = mu.shape[-1]
    neg_entropy = -0.5 * z_dim * (1 + math.log(2 * math.pi)) - log_sigma.sum(-1)  # E_q log q(z | x_n), (N,)
    pairs = log_density(z[:, None], mu[None], log_sigma[None])  # (N z's, N posteriors): log q(z_n | x_m)
    log_qz = log_mean_exp(pairs, dim=1)  # the aggregate posterior at each z_n
    return neg_entropy.mean() - log_qz.mean()


class TextVAE(nn.Module):
    Config = TextVAEConfig
    kind = "textvae"
    modes = {"none": "text", "text_pair": "text"}  # models/family.py: condition -> output
    data = "texts"
    likelihood = True
    bound_name = "−ELBO per sentence (the exact NLL for decoder lm)"
    # Adam by default (the small caption language); the addendum's PTB protocol is flags: --optimizer sgd --lr 1
    # --clip 5 --lr-decay-patience 5 (halve after 5 epochs without improvement). KL warm-up: the lagging-encoder
    # code's 10 epochs at batch 32 on PTB's 42,068 training sentences (1,315 batches an epoch).
    train_defaults = {"optimizer": "adam", "kl_warmup": 13_150}
    optimizer_options: dict = {}
    # (selector, measurement, published value) for cards: PTB anchors of papers.md's addendum (no CNN-VAE PTB
    # number is published; the paper's own are on Yahoo/Yelp)
    paper_results = [
        ({"dataset": "ptb", "decoder": "lstm"}, "test NLL / PPL", "LSTM-VAE 102.54 / 107.64 (texar-pytorch)"),
        ({"dataset": "ptb", "decoder": "lm"}, "test NLL / PPL", "RNN-LM 100 / 116 (Bowman 2016, unconfirmed)"),
    ]

    _never: Tensor  # (vocab,) 0, or −∞ at padding and <bos>: added to the output bias

    def __init__(self, config: TextVAEConfig | None = None):
        super().__init__()
        self.config = c = config or TextVAEConfig()
        self.latent = c.decoder != "lm"
        if self.latent:  # q(z | x)
            self.encoder_embedding = nn.Embedding(c.vocab_size, c.embed, padding_idx=PAD)
            self.encoder = nn.LSTM(c.embed, c.hidden, batch_first=True)
            self.posterior = nn.Linear(c.hidden, 2 * c.z_dim)  # [μ, log σ]
        self.decoder_embedding = nn.Embedding(c.vocab_size, c.embed, padding_idx=PAD)
        inputs = c.embed + (c.z_dim if self.latent else 0)  # z concatenated at every position
        if c.decoder == "cnn":
            self.project = nn.Conv1d(inputs, c.hidden, 1)
            self.blocks = nn.ModuleList(ResidualBlock(c.hidden, d) for d in PRESETS[c.preset])
        else:
            self.rnn = nn.LSTM(inputs, c.hidden, batch_first=True)
        if c.tie_weights:  # logits = E h + b: one (vocab, embed) matrix reads and writes words
            with torch.no_grad():  # N(0, 1) rows would make the first logits' std about 16
                self.decoder_embedding.weight.uniform_(-0.1, 0.1)[PAD] = 0
            self.output_bias = nn.Parameter(torch.zeros(c.vocab_size))
        else:
            self.output = nn.Linear(c.hidden, c.vocab_size)
        never = torch.zeros(c.vocab_size).index_fill_(0, torch.tensor([PAD, BOS]), -math.inf)
        self.register_buffer("_never", never, persistent=False)

    @property
    def steps(self) -> int:
        return 1  # one Step with the whole sentence

    def noise_shape(self) -> tuple[int, ...]:
        return (self.config.z_dim,)

    def loss_noise_shape(self) -> tuple[int, ...]:
        return (self.config.z_dim,)  # one z per sentence ("lm" ignores it)

    @property
    def receptive_field(self) -> int | None:
        """Input positions each CNN output sees (None for the LSTMs: all of the prefix)."""
        return receptive_field(self.config.preset) if self.config.decoder == "cnn" else None

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    # -------------------------------------------------------------------------------------------------------
    # q(z | x)

    def posterior_params(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, L) ids, lengths (B,) -> μ, log σ (B, z_dim) of q(z | x): the LSTM state at token lengths − 1, so
        padding after a sentence never reaches it. For "lm": zeros (no encoder)."""
        if not self.latent:
            zeros = x.new_zeros(x.shape[0], self.config.z_dim, dtype=self.decoder_embedding.weight.dtype)
            return zeros, zeros
        states, _ = self.encoder(self.encoder_embedding(x))  # (B, L, H)
        last = states[torch.arange(x.shape[0], device=x.device), lengths.to(x.device) - 1]
        mu, log_sigma = self.posterior(last).chunk(2, dim=-1)
        return mu, log_sigma

    def encode_noise(self, x: Tensor, lengths: Tensor) -> Tensor:
        """x (B, L), lengths (B,) -> the posterior means (B, z_dim): the ε (= z under the N(0, I) prior) that
        decode maps to a reconstruction, so a walk between two sentences can lerp between them."""
        return self.posterior_params(x.to(self._device()), lengths)[0]

    # -------------------------------------------------------------------------------------------------------
    # p(x | z)

    def embed_inputs(self, x: Tensor) -> Tensor:
        """x (B, L) -> the decoder inputs (B, L, embed): embeddings of [<bos>, x_1, ..., x_{L−1}]. In training
        mode words (not <bos>, not padding) become <unk> with probability word_dropout, then embedding dropout."""
        inputs = torch.cat([torch.full_like(x[:, :1], BOS), x[:, :-1]], dim=1)
        p = self.config.word_dropout
        if self.training and p > 0:
            drop = (torch.rand(inputs.shape, device=inputs.device) < p) & (inputs != PAD)
            drop[:, 0] = False
            inputs = inputs.masked_fill(drop, UNK)
        return F.dropout(self.decoder_embedding(inputs), self.config.dropout, self.training)

    def decoder_states(self, inputs: Tensor, z: Tensor | None) -> Tensor:
        """Input embeddings (B, L, embed), z (B, z_dim) or None for "lm" -> top features (B, L, hidden); state t
        depends on inputs 0..t only (inputs ≤ t hold tokens < t), the CNN's on the last receptive_field of them."""
        if self.latent:
            assert z is not None, "a latent decoder needs z"
            inputs = torch.cat([inputs, z[:, None].expand(-1, inputs.shape[1], -1).to(inputs)], dim=-1)
        if self.config.decoder == "cnn":
            h = self.project(inputs.transpose(1, 2))
            for block in self.blocks:
                h = block(h)
            return F.relu(h).transpose(1, 2)
        return self.rnn(inputs)[0]

    def word_logits(self, states: Tensor) -> Tensor:
        """Decoder states (..., hidden) -> logits (..., vocab) of the next token: −∞ at padding and <bos>, which are
        never emitted, so p(x_t | ·) is a distribution over the words, <unk> and <eos> alone."""
        if self.config.tie_weights:
            return F.linear(states, self.decoder_embedding.weight, self.output_bias + self._never)
        return F.linear(states, self.output.weight, self.output.bias + self._never)  # no (N, vocab) copy

    def next_token_logits(self, x: Tensor, z: Tensor | None) -> Tensor:
        """Teacher forcing: x (B, L), z (B, z_dim) -> logits (B, L, vocab) of p(x_t | x_<t, z) at every t."""
        return self.word_logits(self.decoder_states(self.embed_inputs(x), z))

    def _reconstruction(self, x: Tensor, lengths: Tensor, z: Tensor | None) -> Tensor:
        """−log p(x | z) summed over each sentence's tokens (<eos> included, padding not): (B,) nats. Only the
        real positions reach the vocabulary projection (PTB batches are about half padding)."""
        states = F.dropout(self.decoder_states(self.embed_inputs(x), z), self.config.dropout_out, self.training)
        mask = torch.arange(x.shape[1], device=x.device) < lengths.to(x.device)[:, None]
        nll = F.cross_entropy(self.word_logits(states[mask]), x[mask], reduction="none")
        rows = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(mask)[mask]
        return nll.new_zeros(x.shape[0]).index_add_(0, rows, nll)

    def _terms(self, batch: Mapping[str, Tensor], noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """-> reconstruction (B,), per-dimension KL(q ‖ p) (B, z_dim), log q(z|x) − log p(z) at the sample (B,)."""
        x, lengths = batch["x"], batch["lengths"]
        if not self.latent:
            zeros = x.new_zeros(x.shape[0], dtype=self.decoder_embedding.weight.dtype)
            return self._reconstruction(x, lengths, None), zeros[:, None].expand(-1, self.config.z_dim), zeros
        mu, log_sigma = self.posterior_params(x, lengths)
        z = reparameterise(mu, log_sigma, noise.to(mu))
        kl = kl_standard_normal(mu[..., None], log_sigma[..., None])  # (B, Z): one closed form per dimension
        log_ratio = log_density(z, mu, log_sigma) - log_standard_density(z)
        return self._reconstruction(x, lengths, z), kl, log_ratio

    def log_weight(self, batch: Mapping[str, Tensor], noise: Tensor) -> Tensor:
        """log p(x, z) − log q(z | x) at z = μ + σ ε: batch["x"] (B, L), ["lengths"] (B,), noise (B, z_dim) -> (B,).
        For "lm" it is log p(x) exactly, whatever the noise."""
        reconstruction, _, log_ratio = self._terms(batch, noise)
        return -reconstruction - log_ratio

    def loss(self, batch: Mapping[str, Tensor], noise: Tensor, *, kl_weight: float = 1.0) -> Losses:
        """batch["x"] (B, L), ["lengths"] (B,), noise (B, z_dim) -> Losses, per sentence in nats.

        bound = −ELBO = −log p(x | z) at one z + the analytic KL (the exact NLL for "lm"); minimise = the batch mean
        of reconstruction + kl_weight · KL_train, where KL_train is the true KL, or with free_bits λ > 0 the batch's
        Σ_d max(λ, mean_b KL_bd). Neither kl_weight nor free bits ever touch `bound`, `log_weight` or `terms`.
        """
        reconstruction, kl_d, log_ratio = self._terms(batch, noise)
        kl = kl_d.sum(-1)
        if self.config.free_bits > 0 and self.latent:
            kl_train = kl_d.mean(0).clamp_min(self.config.free_bits).sum()  # one floor per dimension, batch mean
            objective = reconstruction.mean() + kl_weight * kl_train
        else:
            objective = (reconstruction + kl_weight * kl).mean()
        return Losses(minimise={"model": objective}, bound=(reconstruction + kl).detach(),
                      log_weight=(-reconstruction - log_ratio).detach(),
                      terms={"reconstruction": reconstruction.detach(), "kl": kl.detach()})

    # -------------------------------------------------------------------------------------------------------
    # Decoding

    def _start(self, z: Tensor) -> Tensor | tuple[Tensor, Tensor] | None:
        """The decoder's state before <bos>: the CNN's input history (N, 0, C), nothing for the LSTMs."""
        if self.config.decoder == "cnn":
            return z.new_zeros(z.shape[0], 0, self.project.in_channels)
        return None

    def _step(self, state, token: Tensor, z: Tensor) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor]]:
        """One position: the previous token (N,) -> logits (N, vocab) of the next, and the new state. The CNN keeps
        its last receptive_field inputs: the one output needs no more (exactly the teacher-forced value)."""
        e = self.decoder_embedding(token)[:, None]  # (N, 1, embed); no dropout when generating
        if self.latent:
            e = torch.cat([e, z[:, None].to(e)], dim=-1)
        if self.config.decoder == "cnn":
            assert self.receptive_field is not None
            history = torch.cat([state, e], dim=1)[:, -self.receptive_field :]
            h = self.project(history.transpose(1, 2))
            for block in self.blocks:
                h = block(h)
            return self.word_logits(F.relu(h[:, :, -1])), history
        out, state = self.rnn(e, state)
        return self.word_logits(out[:, -1]), state

    @staticmethod
    def _reorder(state, index: Tensor):
        if isinstance(state, tuple):
            return tuple(s.index_select(1, index) for s in state)  # LSTM (h, c): (layers, N, H)
        return state.index_select(0, index)

    @torch.no_grad()
    def decode(self, z: Tensor, *, strategy: str = "sample", temperature: float = 1.0, beam: int = 5,
               generator: torch.Generator | None = None, max_length: int | None = None) -> Tensor:
        """z (B, z_dim) -> tokens (B, L) long: each row's words, <eos>, then padding (0); L is the longest row, at
        most max_length (config.max_length), and a row that reaches it without <eos> ends there, truncated.

        "sample": ancestral sampling from softmax(logits / temperature), drawn with `generator` (a seed gives the
        same tokens; a generator on another device than the model draws there). "greedy": the argmax at each step.
        "beam": beam search of width `beam` on the sentence's total log-probability, no length normalisation (it
        favours short sentences); beam=1 is greedy. Decoding hides posterior collapse (papers.md): judge it by KL
        and mutual information, not by greedy outputs. For "lm" z only sets the batch size.
        """
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if strategy == "sample" and not temperature > 0:
            raise ValueError(f"sampling needs temperature > 0, got {temperature} (greedy is its limit)")
        if beam < 1:
            raise ValueError(f"beam must be >= 1, got {beam}")
        limit = max_length or self.config.max_length
        z = z.to(self._device(), self.decoder_embedding.weight.dtype)
        if strategy == "beam":
            return self._beam(z, beam, limit)
        n = z.shape[0]
        state = self._start(z)
        token = torch.full((n,), BOS, dtype=torch.long, device=z.device)
        done = torch.zeros(n, dtype=torch.bool, device=z.device)
        out: list[Tensor] = []
        for _ in range(limit):
            logits, state = self._step(state, token, z)
            if strategy == "greedy":
                token = logits.argmax(-1)
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                where = generator.device if generator is not None else probs.device
                token = torch.multinomial(probs.to(where), 1, generator=generator).squeeze(1).to(z.device)
            token = token.masked_fill(done, PAD)
            out.append(token)
            done = done | (token == EOS)
            if done.all():
                break
        return torch.stack(out, dim=1)

    def _beam(self, z: Tensor, k: int, limit: int) -> Tensor:
        b, v = z.shape[0], self.config.vocab_size
        rows = torch.arange(b, device=z.device)[:, None]
        state = self._start(z.repeat_interleave(k, 0))
        zk = z.repeat_interleave(k, 0)
        scores = torch.full((b, k), -math.inf, device=z.device)
        scores[:, 0] = 0  # one live hypothesis at the start
        done = torch.zeros(b, k, dtype=torch.bool, device=z.device)
        tokens = torch.empty(b, k, 0, dtype=torch.long, device=z.device)
        only_pad = torch.full((v,), -math.inf, device=z.device)
        only_pad[PAD] = 0  # a finished hypothesis continues with padding at no cost
        token = torch.full((b * k,), BOS, dtype=torch.long, device=z.device)
        for _ in range(limit):
            logits, state = self._step(state, token, zk)
            logp = torch.log_softmax(logits.float(), -1).view(b, k, v)
            logp = torch.where(done[..., None], only_pad, logp)
            scores, index = (scores[..., None] + logp).view(b, -1).topk(k, dim=1)
            origin, word = index // v, index % v
            tokens = torch.cat([tokens[rows, origin], word[..., None]], dim=-1)
            done = done[rows, origin] | (word == EOS)
            state = self._reorder(state, (rows * k + origin).view(-1))
            token = word.view(-1)
            if done.all():
                break
        return tokens[rows[:, 0], scores.argmax(1)]

    def generate(self, noise: Tensor, *, strategy: str = "greedy", temperature: float = 1.0, beam: int = 5,
                 generators: Sequence[torch.Generator] | None = None, **conditions: Tensor) -> Iterator[Step]:
        """One Step with tokens (B, L): the decoding (`decode`'s strategies) of z = noise (B, z_dim), a prior sample,
        or with `texts` (B, L) + `lengths` (B,) (the batch layout: words, <eos>, padding) of their posterior means, a
        reconstruction (noise then unused). "sample" takes one generator per row and decodes each row alone, so a
        row's words depend on its own generator only. A walk is the caller's: lerp encode_noise's means, decode."""
        unknown = sorted(set(conditions) - {"texts", "lengths"})
        if unknown:
            raise ValueError(f"TextVAE.generate takes no condition(s) {unknown}; known: ['texts', 'lengths']")
        if ("texts" in conditions) != ("lengths" in conditions):
            raise ValueError("texts and lengths come together")
        z = self.encode_noise(conditions["texts"], conditions["lengths"]) if "texts" in conditions else noise
        if strategy != "sample":
            return iter((Step(tokens=self.decode(z, strategy=strategy, beam=beam)),))
        if generators is None or len(generators) != z.shape[0]:
            raise ValueError(f"sampling takes one generator per row: {z.shape[0]} rows")
        rows = [self.decode(z[i : i + 1], strategy="sample", temperature=temperature, generator=g)[0]
                for i, g in enumerate(generators)]
        tokens = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long, device=rows[0].device)
        for i, r in enumerate(rows):
            tokens[i, : len(r)] = r
        return iter((Step(tokens=tokens),))  # not a generator function: errors raise now

    # -------------------------------------------------------------------------------------------------------
    # Diagnostics

    @torch.no_grad()
    def _means(self, x: Tensor, lengths: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
        device = self._device()
        parts = [self.posterior_params(x[i : i + batch_size].to(device), lengths[i : i + batch_size].to(device))
                 for i in range(0, x.shape[0], batch_size)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    @torch.no_grad()
    def active_units(self, x: Tensor, lengths: Tensor, threshold: float = 1e-2, *,
                     batch_size: int = 500) -> tuple[tuple[int, ...], tuple[Tensor, ...]]:
        """A_u = Cov_x(E_q[z_u | x]) = the variance of μ_u over the N sentences (population, ddof 0) (Burda et al.
        §5.2): x (N, L), lengths (N,) -> ((active count,), (variances (z_dim,),)), one latent layer, IWAE's layout.
        "lm" has none active."""
        mu, _ = self._means(x, lengths, batch_size)
        variances = mu.double().var(0, correction=0)
        return (int((variances > threshold).sum()),), (variances,)

    @torch.no_grad()
    def mutual_information(self, x: Tensor, lengths: Tensor, *, batch_size: int | None = None,
                           generator: torch.Generator | None = None) -> float:
        """I_q in nats (aggregate_mutual_information), the aggregate posterior taken over each batch of
        `batch_size` rows (all N when None) and the batches' values averaged by size, as the lagging-encoder code
        evaluates it: the estimate is at most log(batch size), so report the batch size with it. ε from
        `generator` on the CPU. 0 for "lm"."""
        if not self.latent:
            return 0.0
        n = x.shape[0]
        size = batch_size or n
        mu, log_sigma = self._means(x, lengths, size)
        eps = torch.randn(mu.shape, generator=generator, dtype=torch.float64)
        total = 0.0
        for i in range(0, n, size):
            part = slice(i, i + size)
            rows = mu[part].shape[0]
            total += rows * aggregate_mutual_information(mu[part], log_sigma[part], eps[part].to(mu.device)).item()
        return total / n
