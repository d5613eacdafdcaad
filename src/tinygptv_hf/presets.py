"""Model sizes as data: the paper's Phi-2 model, its Phi-1.5 variant, and a tiny one with the same structure."""

from .modeling import TinyGPTVConfig

PHI2_TEXT = dict(
    vocab_size=51200,
    hidden_size=2560,
    intermediate_size=10240,
    num_hidden_layers=32,
    num_attention_heads=32,
    partial_rotary_factor=0.4,
    rope_theta=10000.0,
    max_position_embeddings=2048,
    layer_norm_eps=1e-5,
    hidden_act="gelu_new",
    resid_pdrop=0.1,
    embd_pdrop=0.0,
    bos_token_id=50256,
    eos_token_id=50256,
)

PHI1_5_TEXT = dict(
    PHI2_TEXT,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=24,
    partial_rotary_factor=0.5,
    resid_pdrop=0.0,
)

# EVA ViT-g/14 (39 blocks) and the BLIP-2 Q-Former are transformers' Blip2 defaults.
PAPER_VISION = dict(image_size=224)
PAPER_QFORMER = dict(encoder_hidden_size=1408)

PRESETS = {
    "phi2": dict(
        vision_config=PAPER_VISION,
        qformer_config=PAPER_QFORMER,
        text_config=PHI2_TEXT,
        num_query_tokens=32,
        projection_hidden_size=4096,
    ),
    "phi1_5": dict(
        vision_config=PAPER_VISION,
        qformer_config=PAPER_QFORMER,
        text_config=PHI1_5_TEXT,
        num_query_tokens=32,
        projection_hidden_size=4096,
    ),
    "tiny": dict(
        vision_config=dict(
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=224,
            patch_size=14,
            # BLIP-2's default (1e-10) suits a tower that is always loaded pretrained; this one trains from random.
            initializer_range=0.02,
        ),
        qformer_config=dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            encoder_hidden_size=64,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        text_config=dict(
            vocab_size=1088,  # the tiny tokenizer's 1025 tokens, rounded up to a multiple of 64
            hidden_size=128,
            intermediate_size=512,
            num_hidden_layers=2,
            num_attention_heads=4,
            partial_rotary_factor=0.4,
            max_position_embeddings=512,
            hidden_act="gelu_new",
            resid_pdrop=0.0,
        ),
        num_query_tokens=32,
        projection_hidden_size=128,
    ),
}
# The demo's model: `tiny` made to train its vision side from random weights on a CPU in minutes (why each change,
# with the probe results: docs/demo-model.md).
PRESETS["tiny-demo"] = dict(
    PRESETS["tiny"],
    vision_config=dict(PRESETS["tiny"]["vision_config"], patch_size=28, initializer_range=0.3),
    qformer_config=dict(
        PRESETS["tiny"]["qformer_config"], cross_attention_frequency=1, initializer_range=0.2
    ),
    initializer_range=0.2,
    vision_position_init="sincos",
)


def preset_config(name: str, **overrides) -> TinyGPTVConfig:
    """A `TinyGPTVConfig` for a named preset; `text_config` entries in `overrides` are merged, not replaced."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
    spec = {key: dict(value) if isinstance(value, dict) else value for key, value in PRESETS[name].items()}
    for key in ("vision_config", "qformer_config", "text_config"):
        spec[key].update(overrides.pop(key, {}))
    spec.update(overrides)
    return TinyGPTVConfig(**spec)
