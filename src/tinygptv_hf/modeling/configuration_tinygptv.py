"""TinyGPT-V configuration: EVA ViT-g + BLIP-2 Q-Former + two projections + Phi-2 with extra norms.

This file ships as remote code: it may import only pip packages and siblings in its own folder. Loading a folder
imports it first, so it checks the installed transformers before anything imports transformers' internals.
"""

import importlib.metadata
import re

# The transformers releases the remote code runs on, [floor, ceiling): the one home of the range. 5.24 renamed the
# models' `past_key_values` to `cache`, which this code is written against (docs/compatibility.md);
# tests/test_version_matrix.py loads a folder on the floor and the newest release.
TRANSFORMERS_FLOOR, TRANSFORMERS_CEILING = (5, 24), (6, 0)
TRANSFORMERS_REQUIREMENT = "transformers>={}.{},<{}".format(*TRANSFORMERS_FLOOR, TRANSFORMERS_CEILING[0])


def check_transformers_version(installed: str) -> None:
    """Raise one ImportError naming `installed`, the range and the fix when it is outside the range (instead of a
    missing name deep in an import). Release numbers only, so no `packaging` is needed: 5.24.0.dev0 is 5.24."""
    release = tuple(int(part) for part in re.match(r"\d+(?:\.\d+)*", installed).group().split("."))
    if not TRANSFORMERS_FLOOR <= release < TRANSFORMERS_CEILING:
        raise ImportError(
            f"TinyGPT-V's model code needs {TRANSFORMERS_REQUIREMENT}, but transformers {installed} is installed; "
            f'run: pip install "{TRANSFORMERS_REQUIREMENT}"'
        )


check_transformers_version(importlib.metadata.version("transformers"))

from huggingface_hub.dataclasses import strict  # noqa: E402
from transformers import PhiConfig  # noqa: E402
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec  # noqa: E402
from transformers.models.auto.configuration_auto import AutoConfig  # noqa: E402

VISION_POSITION_INITS = ("normal", "sincos")


@strict
class TinyGPTVTextConfig(PhiConfig):
    """Phi with q/k LayerNorm always on and an RMSNorm on the attention branch (TinyGPT-V's Phi-2)."""

    model_type = "tinygptv_text"
    base_config_key = "text_config"
    # Read by transformers' tensor parallelism and by vLLM's and SGLang's Transformers backends (which shard by
    # `model.tp_plan` and split pipeline stages by `_pp_plan`). Phi's heads and MLP split as in Phi: the added q/k
    # LayerNorms act within a head and the post-attention RMSNorm after the row-wise all-reduce.
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.dense": "rowwise",
        "layers.*.mlp.fc1": "colwise",
        "layers.*.mlp.fc2": "rowwise",
    }
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "embed_dropout": (["inputs_embeds"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "final_layernorm": (["hidden_states"], ["hidden_states"]),
    }

    qk_layernorm: bool = True
    post_attention_rms_norm_eps: float = 1e-6

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if not self.qk_layernorm:
            raise ValueError(
                "TinyGPT-V's language model always applies q/k LayerNorm; qk_layernorm must be True."
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"text_config.hidden_size ({self.hidden_size}) is not divisible by "
                f"num_attention_heads ({self.num_attention_heads})."
            )


@strict
class TinyGPTVConfig(PreTrainedConfig):
    """Composite configuration.

    `vision_config` is a `Blip2VisionConfig` (EVA ViT-g), `qformer_config` a `Blip2QFormerConfig`, `text_config` a
    `TinyGPTVTextConfig`. The image becomes `num_query_tokens` LLM embeddings through
    `qformer -> Linear(qformer, projection_hidden_size) -> Linear(projection_hidden_size, text)`, with no activation.

    `vision_position_init` only matters for a vision tower trained from random weights: `"normal"` is BLIP-2's small
    random table; `"sincos"` starts it as a 2D sine-cosine table as large as a random patch embedding, so patches
    know where they are from the first step (at BLIP-2's scale the position signal is ~1% of the patch embedding).
    """

    model_type = "tinygptv"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="blip_2_vision_model"),
        "qformer_config": SubConfigSpec(config_class=AutoConfig, model_type="blip_2_qformer"),
        "text_config": SubConfigSpec(config_class=TinyGPTVTextConfig),
    }

    vision_config: dict | PreTrainedConfig | None = None
    qformer_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    num_query_tokens: int = 32
    projection_hidden_size: int = 4096
    vision_layernorm_eps: float = 1e-5
    image_token_id: int = 50295
    stage: int = 0
    tie_word_embeddings: bool = False
    vision_position_init: str = "normal"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # Saving writes the Auto entries of the saved classes (`register_for_auto_class` in the package): AutoConfig
        # and AutoModelForImageTextToText. The backbone is not saved on its own, so its AutoModel entry is added here.
        self.auto_map = {
            "AutoModel": "modeling_tinygptv.TinyGPTVModel",
            **(getattr(self, "auto_map", None) or {}),
        }
        self.check_sizes()

    def check_sizes(self):
        """Raise a ValueError naming the mismatch when the three towers cannot be wired together."""
        vision, qformer, text = self.vision_config, self.qformer_config, self.text_config
        problems = []
        image_size = vision.image_size if isinstance(vision.image_size, int) else vision.image_size[0]
        patch_size = vision.patch_size if isinstance(vision.patch_size, int) else vision.patch_size[0]
        if image_size % patch_size:
            problems.append(
                f"vision_config.image_size ({image_size}) is not a multiple of patch_size ({patch_size})"
            )
        if vision.hidden_size % vision.num_attention_heads:
            problems.append(
                f"vision_config.hidden_size ({vision.hidden_size}) is not divisible by "
                f"num_attention_heads ({vision.num_attention_heads})"
            )
        if qformer.encoder_hidden_size != vision.hidden_size:
            problems.append(
                f"qformer_config.encoder_hidden_size ({qformer.encoder_hidden_size}) must equal "
                f"vision_config.hidden_size ({vision.hidden_size})"
            )
        if qformer.hidden_size % qformer.num_attention_heads:
            problems.append(
                f"qformer_config.hidden_size ({qformer.hidden_size}) is not divisible by "
                f"num_attention_heads ({qformer.num_attention_heads})"
            )
        if self.num_query_tokens < 1:
            problems.append(f"num_query_tokens must be positive, got {self.num_query_tokens}")
        if self.num_query_tokens >= text.max_position_embeddings:
            problems.append(
                f"num_query_tokens ({self.num_query_tokens}) leaves no room in the context of "
                f"{text.max_position_embeddings} positions"
            )
        if self.vision_position_init not in VISION_POSITION_INITS:
            problems.append(
                f"vision_position_init must be one of {VISION_POSITION_INITS}, got {self.vision_position_init!r}"
            )
        if self.vision_position_init == "sincos" and vision.hidden_size % 4:
            problems.append(
                f"a sincos position table needs vision_config.hidden_size ({vision.hidden_size}) divisible by 4"
            )
        if self.image_token_id < 0:
            problems.append(f"image_token_id must be a non-negative id, got {self.image_token_id}")
        if problems:
            raise ValueError("TinyGPTVConfig sizes do not fit together: " + "; ".join(problems) + ".")


__all__ = ["TinyGPTVConfig", "TinyGPTVTextConfig"]
