"""TinyGPT-V's language model: Phi with q/k LayerNorm plus an RMSNorm on the attention branch.

Stock Phi already places q/k LayerNorm (over head_dim, before RoPE) exactly where TinyGPT-V does, so the only
difference is one `post_layernorm` (RMSNorm, eps 1e-6) applied to the attention output before the residual sum of
Phi's parallel block. The MLP branch stays un-normalised.
"""

from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.phi.modeling_phi import (
    PhiAttention,
    PhiDecoderLayer,
    PhiModel,
    PhiPreTrainedModel,
    PhiRotaryEmbedding,
)

from .configuration_tinygptv import TinyGPTVTextConfig

# The norms TinyGPT-V adds to Phi-2's decoder layers (names within a layer): fresh when pretrained Phi-2 weights
# load, trained from stage 1 on beside Phi-2's own `input_layernorm` and `final_layernorm`.
ADDED_NORMS = ("self_attn.q_layernorm", "self_attn.k_layernorm", "post_layernorm")


class TinyGPTVDecoderLayer(PhiDecoderLayer):
    def __init__(self, config: TinyGPTVTextConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.post_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.post_attention_rms_norm_eps)

    def forward(
        self,
        hidden_states,
        attention_mask=None,
        position_ids=None,
        cache=None,
        use_cache=False,
        position_embeddings=None,
        **kwargs,
    ):
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        attn_output, _ = self.self_attn(
            hidden_states=hidden_states,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        attn_output = self.resid_dropout(self.post_layernorm(attn_output))
        feed_forward_output = self.resid_dropout(self.mlp(hidden_states))
        return attn_output + feed_forward_output + residual


class TinyGPTVTextModel(PhiModel):
    """`PhiModel` whose layers are `TinyGPTVDecoderLayer`s; `PhiModel.forward` is reused unchanged."""

    config_class = TinyGPTVTextConfig
    _no_split_modules = ["TinyGPTVDecoderLayer"]
    _can_record_outputs = {"hidden_states": TinyGPTVDecoderLayer, "attentions": PhiAttention}

    def __init__(self, config: TinyGPTVTextConfig):
        PhiPreTrainedModel.__init__(self, config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [TinyGPTVDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.rotary_emb = PhiRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.embed_dropout = nn.Dropout(config.embd_pdrop)
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()


__all__ = ["TinyGPTVDecoderLayer", "TinyGPTVTextModel"]
