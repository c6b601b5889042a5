"""Tiny random-weight VLM configs for tests, examples and CPU smoke runs -- test-only, not models.

They build a PaliGemma-style or SmolVLM-style backbone of ~100k parameters from a ``transformers`` config (no
download), so ``FlowVLAPolicy`` runs on a CPU in seconds (VLA.md §5.6). For real work pass a local model directory
or a π0 checkpoint (docs/vla.md). ``transformers`` is imported when a config is made.
"""

from sb3_stepnft.vla.backbones import import_transformers


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
