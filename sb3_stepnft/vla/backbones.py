"""Vision-language backbones (frozen) of :class:`FlowVLAPolicy`: building a VLM and adapting it to a prefix encoder.

Everything here imports ``transformers`` at call time only (``import sb3_stepnft`` stays core-only).

**Backbone adapters** turn a stock ``transformers`` VLM into a prefix encoder: images and instruction tokens are
embedded and run through the VLM's language model once, with a bidirectional prefix mask and
``position = cumsum(mask) - 1`` as in π0. They return the last hidden state and the per-layer keys/values.
Supported families: PaliGemma (SigLIP + Gemma, π0) and SmolVLM / Idefics3 (SmolVLA). Each adapter also knows,
from the config alone, how many tokens one image becomes (:attr:`BackboneAdapter.tokens_per_image`), so the policy
derives its feature layout without running the VLM. The action experts are in :mod:`sb3_stepnft.vla.experts`.
"""

from __future__ import annotations

from typing import Any

import torch as th
import torch.nn.functional as F
from torch import nn

VLA_EXTRA_HINT = 'FlowVLAPolicy needs the `vla` extra: pip install "sb3-stepnft[vla]" (transformers>=5.4,<6)'


def import_transformers():
    """``transformers``, or an ImportError naming the extra to install."""
    try:
        import transformers
    except ImportError as error:  # pragma: no cover - exercised in an env without transformers
        raise ImportError(VLA_EXTRA_HINT) from error
    return transformers


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

    @property
    def patches_per_image(self) -> int:
        """Patches the vision tower cuts one ``image_size`` image into."""
        vision = self.vlm.config.vision_config
        return (int(vision.image_size) // int(vision.patch_size)) ** 2

    @property
    def tokens_per_image(self) -> int:
        """Prefix tokens of one image (from the config; checked against a real pass in tests/policies/test_vla.py)."""
        raise NotImplementedError

    def kv_shape(self, prefix_length: int) -> tuple[int, int, int, int, int]:
        """Shape of one observation's per-layer prefix keys/values: ``(n_layers, 2, n_kv, L, head_dim)``."""
        return (self.num_layers, 2, self.num_kv_heads, prefix_length, self.head_dim)

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

    @property
    def tokens_per_image(self) -> int:
        return self.patches_per_image  # one token per SigLIP patch

    def embed_images(self, pixels: th.Tensor) -> th.Tensor:
        out = self.vlm.model.get_image_features(pixels)
        return getattr(out, "pooler_output", out)

    def embed_text(self, ids: th.Tensor) -> th.Tensor:
        """Token embeddings × √width, as π0 / π0.5 (image features are not scaled). transformers >= 5.4 scales inside
        Gemma's ``embed_tokens`` (``embed_scale``); a plain embedding is scaled here."""
        embedding = self.language_model.get_input_embeddings()
        embeds = embedding(ids)
        if getattr(embedding, "embed_scale", None) is None:
            embeds = embeds * th.tensor(self.hidden_size**0.5, dtype=embeds.dtype)
        return embeds


class SmolVLMAdapter(BackboneAdapter):
    """SmolVLM / Idefics3: vision model and pixel-shuffle connector called directly (``get_image_features`` would
    drop all-zero frames as padding), Llama-style text model made bidirectional over the prefix by the mask."""

    @property
    def language_model(self) -> nn.Module:
        return self.vlm.model.text_model

    @property
    def tokens_per_image(self) -> int:
        return self.patches_per_image // int(self.vlm.config.scale_factor) ** 2  # pixel shuffle merges s² patches

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
