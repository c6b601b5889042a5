"""Vision-language backbones (frozen) and action experts (trainable) of :class:`FlowVLAPolicy`.

Everything here imports ``transformers`` at call time only (``import sb3_stepnft`` stays core-only).

* **Backbone adapters** turn a stock ``transformers`` VLM into a prefix encoder: images and instruction tokens
  are embedded and run through the VLM's language model once, with a bidirectional prefix mask and
  ``position = cumsum(mask) - 1`` as in π0. They return the last hidden state and the per-layer keys/values.
  Supported families: PaliGemma (SigLIP + Gemma, π0) and SmolVLM / Idefics3 (SmolVLA).
* **Shared-attention expert** (π0): a copy of the VLM's text decoder with the same layers, heads, KV heads and
  head_dim but a smaller width. Its state and action tokens attend to the prefix keys/values of every layer
  (through a ``DynamicCache`` rebuilt from the stored tensors on each call, so they are never mutated).
* **Cross-attention expert** (lighter, any width): a small ``nn.TransformerDecoder`` whose state and action
  tokens attend to a linear projection of the prefix hidden states.

Both experts carry π0's five heads, named as in π0 checkpoints: ``state_proj``, ``action_in_proj``,
``action_out_proj``, ``action_time_mlp_in``, ``action_time_mlp_out``.
"""

from __future__ import annotations

import copy
import inspect
import math
from typing import Any

import torch as th
import torch.nn.functional as F
from torch import nn

VLA_EXTRA_HINT = 'FlowVLAPolicy needs the `vla` extra: pip install "sb3-stepnft[vla]" (transformers>=5.4,<6)'

SHARED_ATTENTION_TEXT_MODELS = ("gemma", "llama", "qwen2", "smollm", "smollm3")
"""Text decoders with 1-D RoPE and no sliding window: the shared-attention expert is allowed for these."""


def import_transformers():
    """``transformers``, or an ImportError naming the extra to install."""
    try:
        import transformers
    except ImportError as error:  # pragma: no cover - exercised in an env without transformers
        raise ImportError(VLA_EXTRA_HINT) from error
    return transformers


# ------------------------------------------------------------------------------------------------ tiny configs
def tiny_paligemma_config(image_size: int = 64, patch_size: int = 16, vocab_size: int = 400, layers: int = 2):
    """A PaliGemma-style config small enough for CPU tests (~130k parameters, VLA.md §5.6)."""
    transformers = import_transformers()
    return transformers.PaliGemmaConfig(
        vision_config=transformers.SiglipVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
        ).to_dict(),
        text_config=transformers.GemmaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=layers,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            vocab_size=vocab_size,
            pad_token_id=0,
        ).to_dict(),
        image_token_index=vocab_size - 1,
        projection_dim=64,
        hidden_size=64,
    )


def tiny_smolvlm_config(image_size: int = 64, patch_size: int = 8, vocab_size: int = 400, layers: int = 2):
    """A SmolVLM-style config (SigLIP-like vision, pixel-shuffle connector, Llama text) for CPU tests."""
    transformers = import_transformers()
    return transformers.SmolVLMConfig(
        vision_config=dict(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=image_size,
            patch_size=patch_size,
        ),
        text_config=dict(
            model_type="llama",
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=layers,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=32,
            vocab_size=vocab_size,
        ),
        image_token_id=vocab_size - 1,
        scale_factor=2,
    )


# ------------------------------------------------------------------------------------------------- building
def build_vlm(vlm: Any, dtype: th.dtype | None = None) -> nn.Module:
    """A VLM module from a Hub id or local directory (``from_pretrained``), a config (``from_config``, random
    weights) or a module (used as given)."""
    transformers = import_transformers()
    if isinstance(vlm, nn.Module):
        return vlm
    if isinstance(vlm, dict):
        vlm = transformers.AutoConfig.for_model(**vlm)
    if isinstance(vlm, transformers.PretrainedConfig):
        return transformers.AutoModelForImageTextToText.from_config(vlm, **({"dtype": dtype} if dtype else {}))
    if isinstance(vlm, (str, bytes)) or hasattr(vlm, "__fspath__"):
        try:
            return transformers.AutoModelForImageTextToText.from_pretrained(vlm, **({"dtype": dtype} if dtype else {}))
        except OSError as error:
            raise OSError(
                f"Could not load the VLM {vlm!r}: {error}. Pass a local directory written by save_pretrained (or a Hub "
                "id that is in the local cache when HF_HUB_OFFLINE=1), a transformers config, or a module."
            ) from error
    raise TypeError(
        f"vlm must be a Hub id / local directory, a transformers PretrainedConfig or an nn.Module, got {type(vlm).__name__}"
    )


def text_config_of(vlm: nn.Module):
    config = vlm.config
    return getattr(config, "text_config", None) or config


def make_backbone(vlm: nn.Module) -> BackboneAdapter:
    """The prefix-encoder adapter of a VLM, chosen by ``config.model_type``."""
    model_type = getattr(vlm.config, "model_type", None)
    if model_type == "paligemma":
        return PaliGemmaAdapter(vlm)
    if model_type in ("smolvlm", "idefics3"):
        return SmolVLMAdapter(vlm)
    raise NotImplementedError(
        f"FlowVLAPolicy has no backbone adapter for model_type={model_type!r}. Supported: 'paligemma' (π0-style) and "
        "'smolvlm'/'idefics3' (SmolVLA-style). Open an issue with the model id, or pass one of these families."
    )


def additive_prefix_mask(valid: th.Tensor, dtype: th.dtype) -> th.Tensor:
    """``(B, 1, L, L)`` additive mask of a bidirectional prefix: every token sees every valid token."""
    blocked = ~valid.bool()[:, None, None, :]
    mask = th.zeros(valid.shape[0], 1, valid.shape[1], valid.shape[1], dtype=dtype, device=valid.device)
    return mask.masked_fill(blocked, th.finfo(dtype).min)


class BackboneAdapter:
    """Turns images + instruction tokens into ``(hidden (B, L, Dv), kv (B, n_layers, 2, n_kv, L, hd))``."""

    def __init__(self, vlm: nn.Module):
        self.vlm = vlm
        self.text_config = text_config_of(vlm)
        self.num_layers = int(self.text_config.num_hidden_layers)
        self.num_kv_heads = int(self.text_config.num_key_value_heads)
        self.head_dim = int(
            getattr(self.text_config, "head_dim", None) or self.text_config.hidden_size // self.text_config.num_attention_heads
        )
        self.hidden_size = int(self.text_config.hidden_size)
        self.vocab_size = int(self.text_config.vocab_size)

    @property
    def image_size(self) -> int:
        """The vision tower's input resolution (its position embeddings fix it)."""
        return int(self.vlm.config.vision_config.image_size)

    # to be defined by the families
    @property
    def language_model(self) -> nn.Module:
        raise NotImplementedError

    def embed_images(self, pixels: th.Tensor) -> th.Tensor:
        raise NotImplementedError

    def embed_text(self, ids: th.Tensor) -> th.Tensor:
        return self.language_model.get_input_embeddings()(ids)

    @property
    def dtype(self) -> th.dtype:
        return next(self.vlm.parameters()).dtype

    def encode(self, images: list[th.Tensor], ids: th.Tensor | None, text_mask: th.Tensor | None):
        """Run the prefix once. ``images``: list of ``(B, 3, S, S)`` float pixels in [-1, 1] at ``image_size``."""
        dtype = self.dtype
        parts, valid = [], []
        for pixels in images:
            tokens = self.embed_images(pixels.to(dtype))
            parts.append(tokens)
            valid.append(th.ones(tokens.shape[:2], dtype=th.bool, device=tokens.device))
        if ids is not None:
            parts.append(self.embed_text(ids))
            valid.append(text_mask.bool())
        embeds = th.cat(parts, dim=1)
        valid_mask = th.cat(valid, dim=1)
        positions = (th.cumsum(valid_mask.long(), dim=1) - 1).clamp(min=0)
        out = self.language_model(
            inputs_embeds=embeds,
            attention_mask=additive_prefix_mask(valid_mask, embeds.dtype),
            position_ids=positions,
            use_cache=True,
        )
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values  # renamed in transformers 5.x
        kv = th.stack([th.stack([layer.keys, layer.values], dim=1) for layer in cache.layers], dim=1)
        return out.last_hidden_state, kv, valid_mask


class PaliGemmaAdapter(BackboneAdapter):
    """PaliGemma (π0's backbone): SigLIP image tokens via ``get_image_features``, Gemma embeddings (×√d inside)."""

    @property
    def language_model(self) -> nn.Module:
        return self.vlm.model.language_model

    def embed_images(self, pixels: th.Tensor) -> th.Tensor:
        out = self.vlm.model.get_image_features(pixels)
        return getattr(out, "pooler_output", out)


class SmolVLMAdapter(BackboneAdapter):
    """SmolVLM / Idefics3: vision model and pixel-shuffle connector called directly (``get_image_features`` would
    drop all-zero frames as padding), Llama-style text model made bidirectional over the prefix by the mask."""

    @property
    def language_model(self) -> nn.Module:
        return self.vlm.model.text_model

    def embed_images(self, pixels: th.Tensor) -> th.Tensor:
        hidden = self.vlm.model.vision_model(pixel_values=pixels).last_hidden_state
        return self.vlm.model.connector(hidden)


def resize_with_pad(pixels: th.Tensor, size: int, pad_value: float = -1.0) -> th.Tensor:
    """Resize ``(B, C, H, W)`` to ``(B, C, size, size)`` keeping the aspect ratio, padding with ``pad_value``."""
    height, width = pixels.shape[-2:]
    if height == size and width == size:
        return pixels
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    resized = F.interpolate(pixels, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    pad_h, pad_w = size - new_h, size - new_w
    return F.pad(resized, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=pad_value)


# -------------------------------------------------------------------------------------------------- experts
def sincos_time_embedding(t: th.Tensor, dim: int, min_period: float = 4e-3, max_period: float = 4.0) -> th.Tensor:
    """π0's sine-cosine embedding of the flow time (periods from ``min_period`` to ``max_period``)."""
    if dim % 2:
        raise ValueError(f"the time embedding width must be even, got {dim}")
    fraction = th.linspace(0.0, 1.0, dim // 2, dtype=th.float64, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    angles = (2 * math.pi / period)[None, :] * t.to(th.float64)[:, None]
    return th.cat([th.sin(angles), th.cos(angles)], dim=-1).float()


class ActionExpertBase(nn.Module):
    """π0's heads around an expert trunk: state token, action-time tokens, velocity read-out."""

    def __init__(self, width: int, action_dim: int, state_dim: int):
        super().__init__()
        self.width = width
        self.state_proj = nn.Linear(state_dim, width)
        self.action_in_proj = nn.Linear(action_dim, width)
        self.action_out_proj = nn.Linear(width, action_dim)
        self.action_time_mlp_in = nn.Linear(2 * width, width)
        self.action_time_mlp_out = nn.Linear(width, width)

    def suffix_embeddings(self, state: th.Tensor, x_t: th.Tensor, t: th.Tensor) -> th.Tensor:
        """``(B, 1 + H, width)``: the state token, then one action-time token per chunk row."""
        dtype = self.action_in_proj.weight.dtype
        state_token = self.state_proj(state.to(dtype))[:, None]
        actions = self.action_in_proj(x_t.to(dtype))
        time = sincos_time_embedding(t, self.width).to(dtype)[:, None].expand(-1, actions.shape[1], -1)
        tokens = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(th.cat([actions, time], dim=-1))))
        return th.cat([state_token, tokens], dim=1)

    def forward(self, x_t, t, feats) -> th.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class SharedAttentionExpert(ActionExpertBase):
    """π0's action expert: a narrower copy of the VLM's text decoder attending to the prefix keys/values."""

    def __init__(self, text_config, width: int, action_dim: int, state_dim: int, intermediate_size: int | None = None):
        transformers = import_transformers()
        super().__init__(width, action_dim, state_dim)
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
        self.gemma = transformers.AutoModel.from_config(config)  # named as in π0 checkpoints, whatever the family
        self.gemma.embed_tokens = None

    def forward(self, x_t: th.Tensor, t: th.Tensor, feats) -> th.Tensor:
        transformers = import_transformers()
        suffix = self.suffix_embeddings(feats.state, x_t, t)
        batch, n_suffix = suffix.shape[:2]
        prefix_valid = feats.mask.bool()
        n_prefix = prefix_valid.shape[1]
        # state token: prefix + itself; action tokens: prefix + state + all actions (π0's block mask [1, 1, 0, ...])
        suffix_allowed = th.ones(n_suffix, n_suffix, dtype=th.bool, device=suffix.device)
        suffix_allowed[0, 1:] = False
        allowed = th.cat([prefix_valid[:, None, :].expand(-1, n_suffix, -1), suffix_allowed.expand(batch, -1, -1)], dim=2)
        mask = th.zeros(batch, 1, n_suffix, n_prefix + n_suffix, dtype=suffix.dtype, device=suffix.device)
        mask = mask.masked_fill(~allowed[:, None], th.finfo(suffix.dtype).min)
        positions = prefix_valid.long().sum(dim=1, keepdim=True) + th.arange(n_suffix, device=suffix.device)[None]
        kv = feats.kv.to(suffix.dtype)
        cache = transformers.DynamicCache(ddp_cache_data=[(kv[:, i, 0], kv[:, i, 1]) for i in range(kv.shape[1])])
        # transformers renamed `past_key_values` to `cache` (the old name is deprecated, removed in 5.40)
        cache_kwarg = "cache" if "cache" in inspect.signature(self.gemma.forward).parameters else "past_key_values"
        out = self.gemma(
            inputs_embeds=suffix, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_kwarg: cache}
        )
        return self.action_out_proj(out.last_hidden_state[:, 1:]).float()


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
        suffix = self.suffix_embeddings(feats.state, x_t, t) + self.position
        memory = self.memory_proj(feats.hidden.to(suffix.dtype))
        out = self.decoder(suffix, memory, memory_key_padding_mask=~feats.mask.bool())
        return self.action_out_proj(out[:, 1:]).float()
