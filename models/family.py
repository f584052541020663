"""The generator contract: what every family in `models/` offers, and the registry that finds a family by kind.

A family is a plain `nn.Module` in one file with a frozen `Config` dataclass. The trainer, the evaluator, the
checkpoint loader and the worker talk to it through this contract alone and never branch on its name:

- `kind`, `modes` (generation condition → output), `data` (what it trains on), `likelihood` (has an encoder);
- `noise_shape` (one latent sample's ε), `loss_noise_shape` (the ε one training example needs: k samples for IWAE);
- `loss(batch, noise)` → `Losses`: the scalar per optimiser group, the bound in nats, the log importance weight;
- `log_weight(batch, noise)` → log p(x, z) − log q(z | x) at one sample per row (families with an encoder);
- `generate(noise, **conditions)` → T `Step`s (the DRAW family) or one.

The tensors each condition arrives as (worker/conditions.py builds them): "caption" → `captions` (B, K) word ids
right-padded with 0 and `lengths` (B,); "images" → `images` (B, C, H, W) in {0, 1}, or grey levels in [0, 1] for a
family whose `pixels` attribute is "grey"; "image_set" → `sets` (B, S, C, H, W) and `set_mask` (B, S) (sets of
different sizes padded to one S); "none" → nothing. A "few_shot" mode (output "labels") is served by the family's
`class_scores(support (N, K, C, H, W), query (Q, C, H, W), support_mask (N, K))` → (Q, N), not by `generate`.
A text family (outputs "text") reads "text_pair" as `texts` (B, L) word ids (words, <eos>, padding) and `lengths`,
yields one Step with `tokens`, and its `generate` also takes the decoding: `strategy` ("greedy", "sample", "beam"),
`temperature`, `beam`, and for "sample" `generators`, one per row.
A "walk" is run by the caller in noise space: families that offer it with "images" also define `encode_noise(x)`
→ (B, *noise shape), the ε their decoder maps to x's posterior-mean path. Optional: `param_groups()` (several
networks), `init_output_bias(pixel_means)` (called by the trainer on a fresh run), `active_units(x)` (reported by
evaluate), `log_weight_broadcasts = True` (log_weight also takes noise (B, m, *noise shape), m samples of each row,
and returns (B, m): what depends on x alone runs once a row, where L_k would otherwise repeat each row m times).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import import_module
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:  # torch-free at import: the trainer's CLI and config validation list families without it
    from torch import Tensor, nn

# What a generation request carries, and what it gets back (worker.protocol names the same strings).
Condition = Literal["none", "caption", "images", "walk", "image_set", "few_shot", "text_pair"]
Output = Literal["frames", "images", "text", "labels"]
Data = Literal["images", "captioned_images", "image_sets", "texts"]


@dataclass(frozen=True)
class Step:
    """What `generate` yields after each step; the sampler turns logits into pixels and keeps the frames.

    A DRAW-family generator updates one canvas in place, so `logits` holds this step's canvas only until the
    iterator advances: copy what you keep (the sampler copies each step into its frames)."""

    logits: Tensor | None = None  # (B, C, H, W) Bernoulli logits of the canvas: pixels are σ(logits)
    window: Tensor | None = None  # (B, 4) the step's write window (x0, y0, x1, y1) in pixels
    alignment: Tensor | None = None  # (B, K) word weights α_t
    tokens: Tensor | None = None  # (B, L) word ids (text families)


@dataclass(frozen=True)
class Losses:
    """One batch's objective. `bound` and `terms` are per example (B,); `minimise` holds one scalar per group."""

    # optimiser group -> scalar to minimise ({"model"}; VAE/GAN and AVB several); None: the group sits this batch out
    minimise: dict[str, Tensor | None]
    bound: Tensor  # (B,) nats, an upper bound on −log p(x) (−ELBO, −L_k): validation and early stopping
    log_weight: Tensor | None = None  # (B,) log p(x, z) − log q(z | x) at the first sample, where there is a q
    terms: dict[str, Tensor] = field(default_factory=dict)  # (B,) parts logged as means: reconstruction, kl


class Generator(Protocol):
    """The contract. Class attributes of each family: `Config` (frozen dataclass), and the read-only members below."""

    @property
    def kind(self) -> str: ...  # the checkpoint's "kind"

    @property
    def modes(self) -> Mapping[str, str]: ...  # Condition -> Output of a generation request

    @property
    def data(self) -> str: ...  # Data it trains on

    @property
    def likelihood(self) -> bool: ...  # log_weight is defined: L_k, scoring

    @property
    def train_defaults(self) -> Mapping[str, Any]: ...  # TrainConfig fields the paper sets (optimizer, kl_warmup)

    @property
    def optimizer_options(self) -> Mapping[str, Any]: ...  # extra keyword arguments of the optimizer (Adam's eps)

    @property
    def config(self) -> Any: ...  # the family's Config, rebuilt from checkpoint.json

    @property
    def steps(self) -> int: ...  # steps `generate` yields: T for the DRAW family, 1 for one-shot decoders

    def noise_shape(self) -> tuple[int, ...]: ...

    def loss_noise_shape(self) -> tuple[int, ...]: ...

    def loss(self, batch: Mapping[str, Tensor], noise: Tensor, *, kl_weight: float = 1.0) -> Losses: ...

    def log_weight(self, batch: Mapping[str, Tensor], noise: Tensor) -> Tensor: ...

    @property
    def generate(self) -> Callable[..., Iterator[Step]]:
        """(noise (B, *noise_shape), **conditions) -> the steps; each family names its own conditions."""

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...


# kind -> "module:Class"; imported on first use so a worker loads only the families it serves.
FAMILIES: dict[str, str] = {
    "draw": "models.draw:DRAW",
    "aligndraw": "models.aligndraw:AlignDRAW",
    "iwae": "models.iwae:IWAE",
    "vaegan": "models.vaegan:VAEGAN",
    "avb": "models.avb:AVB",
    "statistician": "models.statistician:Statistician",
    "textvae": "models.textvae:TextVAE",
}


DEFAULT_KIND = "aligndraw"  # the product's own family: `python -m training train` without --model


class UnknownFamilyError(KeyError):
    pass


def family(kind: str) -> type[Any]:
    """The class of family `kind` (it has `Config` and the class attributes of `Generator`)."""
    if kind not in FAMILIES:
        raise UnknownFamilyError(f"unknown model kind {kind!r}; known: {sorted(FAMILIES)}")
    module, name = FAMILIES[kind].split(":")
    return getattr(import_module(module), name)


def build(kind: str, config: Mapping[str, Any] | None = None) -> Any:
    """A fresh model of family `kind` from its config fields (the defaults where none are given)."""
    cls = family(kind)
    return cls(cls.Config(**(config or {})))


def param_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The model's optimiser groups: its own `param_groups()` (adversarial families), else one group "model"."""
    groups = getattr(model, "param_groups", None)
    return groups() if callable(groups) else {"model": list(model.parameters())}
