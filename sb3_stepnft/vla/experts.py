"""Action experts (trainable) of :class:`~sb3_stepnft.vla.policy.FlowVLAPolicy`: the velocity field over the prefix.

* **Shared-attention expert** (π0): a copy of the VLM's text decoder with the same layers, heads, KV heads and
  head_dim but a smaller width. Its state and action tokens attend to the prefix keys/values of every layer
  (through a ``DynamicCache`` rebuilt from the stored tensors on each call, so they are never mutated).
* **Cross-attention expert** (lighter, any width): a small ``nn.TransformerDecoder`` whose state and action
  tokens attend to a linear projection of the prefix hidden states.

Both experts carry π0's five heads, named as in π0 checkpoints: ``state_proj``, ``action_in_proj``,
``action_out_proj``, ``action_time_mlp_in``, ``action_time_mlp_out``. The π0.5 variant (shared expert only) has
``action_in_proj``, ``action_out_proj``, ``time_mlp_in`` and ``time_mlp_out``, no state token, and replaces every
RMSNorm of the expert (both per layer and the final one) by an :class:`AdaRMSNorm` conditioned on the time
embedding, with gated residuals. ``transformers`` is imported at call time.
"""

from __future__ import annotations

import copy
import inspect
import math

import torch as th
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from sb3_stepnft.vla.backbones import import_transformers

SHARED_ATTENTION_TEXT_MODELS = ("gemma", "llama", "qwen2", "smollm", "smollm3")
"""Text decoders with 1-D RoPE and no sliding window: the shared-attention expert is allowed for these."""


def sincos_time_embedding(t: th.Tensor, dim: int, min_period: float = 4e-3, max_period: float = 4.0) -> th.Tensor:
    """π0's sine-cosine embedding of the flow time (periods from ``min_period`` to ``max_period``)."""
    if dim % 2:
        raise ValueError(f"the time embedding width must be even, got {dim}")
    fraction = th.linspace(0.0, 1.0, dim // 2, dtype=th.float64, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    angles = (2 * math.pi / period)[None, :] * t.to(th.float64)[:, None]
    return th.cat([th.sin(angles), th.cos(angles)], dim=-1).float()


class AdaRMSNorm(nn.Module):
    """π0.5's adaptive RMSNorm: ``dense(cond)`` gives a scale, shift and gate per channel;
    ``norm(x)·(1 + scale) + shift`` and the gate multiplies the residual branch the norm feeds
    (``x + gate·f(norm(x))``).

    Initialised so that a fresh π0.5 expert is a plain pre-norm Gemma expert: ``dense`` is zero except the gate's
    bias, which is one (scale = shift = 0, gate = 1). LeRobot zero-initialises only ``dense.weight`` (its bias keeps
    ``nn.Linear``'s random init); a loaded checkpoint overrides either.
    """

    def __init__(self, dim: int, cond_dim: int, eps: float = 1e-6):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.dense = nn.Linear(cond_dim, 3 * dim)
        nn.init.zeros_(self.dense.weight)
        with th.no_grad():
            self.dense.bias.zero_()
            self.dense.bias[2 * dim :] = 1.0

    def forward(self, x: th.Tensor, cond: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """``(normalised x, gate)`` for ``x`` (B, L, dim) and ``cond`` (B, cond_dim); the variance in float32."""
        variance = x.float().square().mean(dim=-1, keepdim=True)
        normed = x * th.rsqrt(variance + self.eps)
        scale, shift, gate = self.dense(cond)[:, None].chunk(3, dim=-1)
        normed = normed * (1 + scale.float()) + shift.float()
        return normed.to(x.dtype), gate.to(x.dtype)


class ActionExpertBase(nn.Module):
    """The heads around an expert trunk: π0's state token and action-time tokens, or π0.5's action tokens and
    time condition; the velocity read-out."""

    def __init__(self, width: int, action_dim: int, state_dim: int, variant: str = "pi0"):
        super().__init__()
        self.width, self.variant = width, variant
        if variant != "pi05":  # π0's creation order (and so its random initialisation) as before π0.5 existed
            self.state_proj = nn.Linear(state_dim, width)
        self.action_in_proj = nn.Linear(action_dim, width)
        self.action_out_proj = nn.Linear(width, action_dim)
        if variant == "pi05":
            self.time_mlp_in = nn.Linear(width, width)
            self.time_mlp_out = nn.Linear(width, width)
        else:
            self.action_time_mlp_in = nn.Linear(2 * width, width)
            self.action_time_mlp_out = nn.Linear(width, width)

    @property
    def has_state_token(self) -> bool:
        return self.variant != "pi05"

    def suffix_embeddings(self, state: th.Tensor, x_t: th.Tensor, t: th.Tensor) -> tuple[th.Tensor, th.Tensor | None]:
        """π0: ``(B, 1 + H, width)`` (the state token, then one action-time token per chunk row) and no condition.
        π0.5: ``(B, H, width)`` action tokens and the ``(B, width)`` time condition of the AdaRMS norms."""
        dtype = self.action_in_proj.weight.dtype
        actions = self.action_in_proj(x_t.to(dtype))
        time = sincos_time_embedding(t, self.width).to(dtype)
        if self.variant == "pi05":
            cond = F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(time))))
            return actions, cond
        state_token = self.state_proj(state.to(dtype))[:, None]
        time = time[:, None].expand(-1, actions.shape[1], -1)
        tokens = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(th.cat([actions, time], dim=-1))))
        return th.cat([state_token, tokens], dim=1), None

    def forward(self, x_t, t, feats) -> th.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class SharedAttentionExpert(ActionExpertBase):
    """π0's action expert: a narrower copy of the VLM's text decoder attending to the prefix keys/values
    (π0.5: with :class:`AdaRMSNorm` norms and gated residuals)."""

    def __init__(
        self,
        text_config,
        width: int,
        action_dim: int,
        state_dim: int,
        intermediate_size: int | None = None,
        variant: str = "pi0",
    ):
        transformers = import_transformers()
        super().__init__(width, action_dim, state_dim, variant)
        model_type = getattr(text_config, "model_type", None)
        if model_type not in SHARED_ATTENTION_TEXT_MODELS or getattr(text_config, "sliding_window", None):
            raise ValueError(
                f"expert='shared' needs a text decoder with 1-D RoPE and no sliding window ({SHARED_ATTENTION_TEXT_MODELS}); "
                f"this VLM's is {model_type!r}. Use expert='cross'."
            )
        config = copy.deepcopy(text_config)
        config.head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
        config.hidden_size = width
        config.intermediate_size = intermediate_size or 4 * width
        config.pad_token_id = config.bos_token_id = config.eos_token_id = None
        config.vocab_size = 1
        config._attn_implementation = "sdpa"
        # float32 master weights whatever the VLM's dtype: a bf16 VLM's text config carries ``dtype=bfloat16``, which
        # ``from_config`` would otherwise give the copied trunk (the heads are plain nn.Linear, float32)
        config.dtype = th.float32
        self.gemma = transformers.AutoModel.from_config(config, dtype=th.float32)  # named as in π0 checkpoints
        self.gemma.embed_tokens = None
        if variant == "pi05":
            eps = float(getattr(config, "rms_norm_eps", 1e-6))
            for layer in self.gemma.layers:
                layer.input_layernorm = AdaRMSNorm(width, width, eps)
                layer.post_attention_layernorm = AdaRMSNorm(width, width, eps)
            self.gemma.norm = AdaRMSNorm(width, width, eps)
        attention = self.gemma.layers[0].self_attn.forward
        # transformers renamed `past_key_values` to `cache` (the old name is deprecated, removed in 5.40)
        self._cache_kwarg = "cache" if "cache" in inspect.signature(attention).parameters else "past_key_values"
        self.gradient_checkpointing = False

    def forward(self, x_t: th.Tensor, t: th.Tensor, feats) -> th.Tensor:
        suffix, cond = self.suffix_embeddings(feats.state, x_t, t)
        batch, n_suffix = suffix.shape[:2]
        prefix_valid = feats.mask.bool()
        n_prefix = prefix_valid.shape[1]
        # π0: state token sees prefix + itself; action tokens see prefix + state + all actions (block mask [1, 1, 0, ...]).
        # π0.5: action tokens see prefix + all actions ([1, 0, ...]).
        suffix_allowed = th.ones(n_suffix, n_suffix, dtype=th.bool, device=suffix.device)
        if self.has_state_token:
            suffix_allowed[0, 1:] = False
        allowed = th.cat([prefix_valid[:, None, :].expand(-1, n_suffix, -1), suffix_allowed.expand(batch, -1, -1)], dim=2)
        mask = th.zeros(batch, 1, n_suffix, n_prefix + n_suffix, dtype=suffix.dtype, device=suffix.device)
        mask = mask.masked_fill(~allowed[:, None], th.finfo(suffix.dtype).min)
        positions = prefix_valid.long().sum(dim=1, keepdim=True) + th.arange(n_suffix, device=suffix.device)[None]
        prefix = PrefixKeyValues(feats.kv.to(suffix.dtype))
        hidden = suffix
        position_embeddings = self.gemma.rotary_emb(hidden, positions)
        checkpointing = self.gradient_checkpointing and th.is_grad_enabled()
        for layer in self.gemma.layers:
            args = (layer, hidden, cond, mask, positions, position_embeddings, prefix)
            hidden = checkpoint(self._layer, *args, use_reentrant=False) if checkpointing else self._layer(*args)
        hidden = self.gemma.norm(hidden) if cond is None else self.gemma.norm(hidden, cond)[0]
        return self.action_out_proj(hidden[:, 1:] if self.has_state_token else hidden).float()

    def _layer(self, layer, hidden, cond, mask, positions, position_embeddings, prefix) -> th.Tensor:
        """One decoder layer of the expert over the suffix, attending to the prefix keys/values of that layer.
        π0: the text model's own pre-norm layer; π0.5: AdaRMS norms and gated residuals ``x + gate·f(norm(x))``
        (LeRobot's PiGemma layer). The attention, rotary embedding and MLP are the stock ``transformers`` modules."""
        normed, gate = (layer.input_layernorm(hidden), None) if cond is None else layer.input_layernorm(hidden, cond)
        attended, _ = layer.self_attn(
            hidden_states=normed,
            attention_mask=mask,
            position_ids=positions,
            position_embeddings=position_embeddings,
            **{self._cache_kwarg: prefix},
        )
        hidden = hidden + (attended if gate is None else attended * gate)
        normed, gate = (
            (layer.post_attention_layernorm(hidden), None) if cond is None else layer.post_attention_layernorm(hidden, cond)
        )
        out = layer.mlp(normed)
        return hidden + (out if gate is None else out * gate)


class PrefixKeyValues:
    """The stored prefix keys/values as the cache a ``transformers`` attention layer expects: ``update`` returns the
    prefix of that layer followed by the suffix's keys/values and changes nothing, so a layer can run twice (gradient
    checkpointing recomputes it) and the stored features are never mutated."""

    def __init__(self, kv: th.Tensor):
        self.kv = kv  # (B, n_layers, 2, n_kv, L, head_dim)

    def update(self, key_states: th.Tensor, value_states: th.Tensor, layer_idx: int, *args, **kwargs):
        keys = th.cat([self.kv[:, layer_idx, 0], key_states], dim=2)
        values = th.cat([self.kv[:, layer_idx, 1], value_states], dim=2)
        return keys, values


class CrossAttentionExpert(ActionExpertBase):
    """A lighter expert: state and action-time tokens (plus a learned position) attend to ``Linear(prefix hidden)``."""

    def __init__(
        self, prefix_width: int, width: int, action_dim: int, state_dim: int, chunk_size: int, layers: int = 2, heads: int = 2
    ):
        super().__init__(width, action_dim, state_dim)
        self.memory_proj = nn.Linear(prefix_width, width)
        self.position = nn.Parameter(th.zeros(1, 1 + chunk_size, width))
        layer = nn.TransformerDecoderLayer(
            width, heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, layers)

    def forward(self, x_t: th.Tensor, t: th.Tensor, feats) -> th.Tensor:
        suffix = self.suffix_embeddings(feats.state, x_t, t)[0] + self.position
        memory = self.memory_proj(feats.hidden.to(suffix.dtype))
        out = self.decoder(suffix, memory, memory_key_padding_mask=~feats.mask.bool())
        return self.action_out_proj(out[:, 1:]).float()
