"""TinyGPT-V: a frozen EVA ViT-g and BLIP-2 Q-Former feeding Phi-2 through two linear projections.

Layout follows transformers' Llava: `TinyGPTVModel` is the backbone (vision tower, Q-Former with its query tokens,
projector, language model) and `TinyGPTVForConditionalGeneration` adds the LM head, the loss and generation.
Images enter the text sequence at placeholder tokens: the processor expands every `<ImageHere>` into
`num_query_tokens` copies of `image_token_id`, and the model scatters the projected Q-Former output into them.

This file ships as remote code: it may import only pip packages and siblings in its own folder.
"""

import copy
from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.initialization import copy_, normal_
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    BaseModelOutputWithPooling,
    CausalLMOutputWithPast,
)
from transformers.models.blip_2.modeling_blip_2 import (
    Blip2QFormerModel,
    Blip2VisionModel,
)
from transformers.utils import logging
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_tinygptv import TinyGPTVConfig
from .modeling_tinygptv_phi import TinyGPTVTextModel
from .quantization_tinygptv import cpu_int8_config

logger = logging.get_logger(__name__)


@dataclass
class TinyGPTVModelOutput(BaseModelOutputWithPast):
    """Backbone output; `image_features` are the projected image embeddings that were spliced in."""

    image_features: torch.FloatTensor | None = None


@dataclass
class TinyGPTVCausalLMOutput(CausalLMOutputWithPast):
    image_features: torch.FloatTensor | None = None


class TinyGPTVProjector(nn.Module):
    """The paper's two linear layers (Q-Former width -> 4096 -> LLM width), deliberately without activation."""

    def __init__(self, config: TinyGPTVConfig):
        super().__init__()
        self.linear_1 = nn.Linear(config.qformer_config.hidden_size, config.projection_hidden_size)
        self.linear_2 = nn.Linear(config.projection_hidden_size, config.text_config.hidden_size)

    def forward(self, query_output: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.linear_1(query_output))


class TinyGPTVPreTrainedModel(PreTrainedModel):
    config_class = TinyGPTVConfig
    config: TinyGPTVConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False
    _can_compile_fullgraph = False
    # As in BLIP-2: the Q-Former and its queries stay float32 when the rest loads in half precision.
    _keep_in_fp32_modules_strict = ["query_tokens", "qformer"]
    _no_split_modules = ["Blip2EncoderLayer", "Blip2QFormerLayer", "TinyGPTVDecoderLayer"]
    _skip_keys_device_placement = "cache"
    # bitsandbytes quantizes only the language model's layers unless the caller lists `llm_int8_skip_modules`
    # (a list of their own replaces this one). The image path and the LM head are small and sensitive to rounding.
    # Patterns match from the start of a module name, hence the optional prefix of the backbone inside the LM class.
    _bnb_skip_modules = [
        r"(model\.)?vision_model",
        r"(model\.)?query_tokens",
        r"(model\.)?qformer",
        r"(model\.)?multi_modal_projector",
        "lm_head",
    ]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained` that raises on missing or unexpected weights instead of warning and
        initialising them randomly, and that keeps `_bnb_skip_modules` unquantized under bitsandbytes by default.
        Pass `output_loading_info=True` to load a partial checkpoint and inspect the keys yourself.
        `cpu_int8=True` loads for fast CPU inference (int8 weights, see quantization_tinygptv.py)."""
        if kwargs.pop("cpu_int8", False):
            kwargs["quantization_config"] = cpu_int8_config(kwargs.get("quantization_config"), kwargs.get("dtype"))
        quantization_config = kwargs.get("quantization_config")
        if (
            getattr(quantization_config, "quant_method", None) == "bitsandbytes"
            and quantization_config.llm_int8_skip_modules is None
        ):
            quantization_config = copy.deepcopy(quantization_config)
            quantization_config.llm_int8_skip_modules = list(cls._bnb_skip_modules)
            kwargs["quantization_config"] = quantization_config
        wants_loading_info = kwargs.pop("output_loading_info", False)
        model, loading_info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        if wants_loading_info:
            return model, loading_info
        missing, unexpected = sorted(loading_info["missing_keys"]), sorted(loading_info["unexpected_keys"])
        if missing or unexpected:
            raise ValueError(
                f"The checkpoint at {pretrained_model_name_or_path} does not match {cls.__name__}: missing weights "
                f"{missing}, unexpected weights {unexpected}. Pass output_loading_info=True to load it anyway."
            )
        return model

    def _init_weights(self, module):
        """The vision tower and Q-Former are sub-models that initialise themselves first (with their own configs'
        ranges); what is left here is the query tokens and, on request, the vision position table."""
        super()._init_weights(module)
        if isinstance(module, TinyGPTVModel):
            normal_(module.query_tokens, mean=0.0, std=self.config.text_config.initializer_range)
            if self.config.vision_position_init == "sincos":
                table = sincos_position_table(self.config.vision_config)
                copy_(module.vision_model.embeddings.position_embedding, table)


def sincos_position_table(vision_config) -> torch.Tensor:
    """A (1, 1 + patches, hidden) table: zero for the class token, then x and y each in sine-cosine pairs over a
    quarter of the channels, scaled to the standard deviation a random patch embedding has on unit-variance pixels
    (`initializer_range * sqrt(3 * patch**2)`), so position is as visible as content from the start."""
    grid = vision_config.image_size // vision_config.patch_size
    quarter = vision_config.hidden_size // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    rows, columns = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    angles = [axis.flatten().float()[:, None] * frequencies for axis in (columns, rows)]
    table = torch.cat([part for angle in angles for part in (angle.sin(), angle.cos())], dim=1)
    scale = vision_config.initializer_range * (3 * vision_config.patch_size**2) ** 0.5
    return torch.cat([torch.zeros(1, vision_config.hidden_size), scale * table])[None]


class TinyGPTVModel(TinyGPTVPreTrainedModel):
    # The backbone loads from a full checkpoint, whose LM head it has no place for.
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]

    def __init__(self, config: TinyGPTVConfig):
        super().__init__(config)
        self.vision_model = Blip2VisionModel(config.vision_config)
        # EVA ViT-g has no final norm; BLIP-2's `ln_vision` (eps 1e-5) plays the role of HF's post_layernorm.
        self.vision_model.post_layernorm.eps = config.vision_layernorm_eps
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, config.qformer_config.hidden_size))
        self.qformer = Blip2QFormerModel(config.qformer_config)
        self.multi_modal_projector = TinyGPTVProjector(config)
        self.language_model = TinyGPTVTextModel(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def train(self, mode: bool = True):
        """A frozen vision tower or Q-Former stays in eval mode (no dropout), as the original's `disabled_train`."""
        super().train(mode)
        for tower in (self.vision_model, self.qformer):
            if not any(parameter.requires_grad for parameter in tower.parameters()):
                tower.eval()
        return self

    def get_image_features(self, pixel_values: torch.FloatTensor, **kwargs) -> BaseModelOutputWithPooling:
        """Encode images into `num_query_tokens` LLM-space vectors each (`pooler_output`, shape (B, Q, D))."""
        if pixel_values.ndim != 4:
            raise ValueError(f"pixel_values must have shape (batch, 3, height, width), got {tuple(pixel_values.shape)}")
        expected = self.config.vision_config.image_size
        if pixel_values.shape[-2:] != (expected, expected):
            raise ValueError(
                f"pixel_values are {pixel_values.shape[-2]}x{pixel_values.shape[-1]} but this checkpoint's vision "
                f"tower takes {expected}x{expected}; use the checkpoint's own processor."
            )
        vision_outputs = self.vision_model(pixel_values=pixel_values, return_dict=True)
        image_embeds = vision_outputs.last_hidden_state
        query_dtype = self.query_tokens.dtype
        image_embeds = image_embeds.to(query_dtype)
        image_attention_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        query_tokens = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        query_output = self.qformer(
            query_embeds=query_tokens,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_attention_mask,
            return_dict=True,
        ).last_hidden_state
        compute_dtype = self.get_input_embeddings().weight.dtype
        image_features = self.multi_modal_projector(query_output.to(compute_dtype))
        return BaseModelOutputWithPooling(last_hidden_state=query_output, pooler_output=image_features)

    def get_placeholder_mask(self, input_ids: torch.LongTensor, image_features: torch.Tensor) -> torch.BoolTensor:
        """Positions of the image tokens, after checking that they match the number of image embeddings."""
        mask = input_ids == self.config.image_token_id
        n_tokens = int(mask.sum())
        n_features = image_features.shape[0] * image_features.shape[1]
        if n_tokens != n_features:
            per_image = self.config.num_query_tokens
            raise ValueError(
                f"input_ids hold {n_tokens} image tokens (id {self.config.image_token_id}) but "
                f"{image_features.shape[0]} image(s) give {n_features} embeddings ({per_image} per image): "
                f"the number of images must match the number of <ImageHere> placeholders."
            )
        return mask

    def embed_tokens(self, input_ids: torch.LongTensor) -> torch.Tensor:
        # The placeholder id need not have an embedding row: its rows are overwritten by image features.
        text_ids = input_ids.masked_fill(input_ids == self.config.image_token_id, 0)
        return self.get_input_embeddings()(text_ids)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> TinyGPTVModelOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        seq_length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        past_length = cache.get_seq_length() if cache is not None else 0
        max_positions = self.config.text_config.max_position_embeddings
        if past_length + seq_length > max_positions:
            raise ValueError(
                f"The sequence is {past_length + seq_length} tokens long (prompt, image tokens and generated tokens) "
                f"but the model's context holds {max_positions}; shorten the prompt or max_new_tokens."
            )

        image_features = None
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
            if pixel_values is not None:
                image_features = self.get_image_features(pixel_values).pooler_output
                image_features = image_features.to(inputs_embeds.device, inputs_embeds.dtype)
                mask = self.get_placeholder_mask(input_ids, image_features).unsqueeze(-1)
                inputs_embeds = inputs_embeds.masked_scatter(mask, image_features)
            elif (input_ids == self.config.image_token_id).any():
                raise ValueError(
                    "input_ids contain image tokens but no pixel_values were given: pass the images that the "
                    "<ImageHere> placeholders stand for."
                )
        elif pixel_values is not None:
            raise ValueError("pixel_values cannot be combined with inputs_embeds; pass input_ids instead.")

        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )
        return TinyGPTVModelOutput(
            last_hidden_state=outputs.last_hidden_state,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_features=image_features,
        )


class TinyGPTVForConditionalGeneration(TinyGPTVPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {}

    def __init__(self, config: TinyGPTVConfig):
        super().__init__(config)
        self.model = TinyGPTVModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=True)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def get_image_features(self, pixel_values: torch.FloatTensor, **kwargs) -> BaseModelOutputWithPooling:
        return self.model.get_image_features(pixel_values, **kwargs)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> TinyGPTVCausalLMOutput:
        """`labels` use -100 for ignored positions and are shifted inside; with Trainer, `num_items_in_batch`
        arrives through kwargs so the loss stays a per-token mean under gradient accumulation and DDP."""
        loss_kwargs = {k: kwargs.pop(k) for k in ("num_items_in_batch", "ignore_index") if k in kwargs}
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden_states = hidden_states[:, -logits_to_keep:, :]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden_states = hidden_states[:, logits_to_keep, :]
        # A strided slice would make torch's CPU bf16 linear (and bitsandbytes' 4-bit layers, which call it) copy
        # the LM head's weight once per sequence of the batch (2 GB for Phi-2's head at batch 8); copy the rows.
        logits = self.lm_head(hidden_states.contiguous()).float()

        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **loss_kwargs
            )
        return TinyGPTVCausalLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_features=outputs.image_features,
        )

    def generate(self, *args, tokenizer=None, **kwargs):
        """Generation stops on the end symbol (`stop_strings`, e.g. "###"), which needs the tokenizer; when the
        caller gives none, the checkpoint's own tokenizer is loaded once from where the model came from."""
        generation_config = kwargs.get("generation_config") or self.generation_config
        stop_strings = kwargs.get("stop_strings", getattr(generation_config, "stop_strings", None))
        if stop_strings and tokenizer is None:
            tokenizer = self._checkpoint_tokenizer()
            if tokenizer is None:
                logger.warning_once(
                    "The generation config stops on %r but no tokenizer was passed and none was found next to "
                    "the weights; generation runs to max_new_tokens. Pass tokenizer=processor.tokenizer.",
                    stop_strings,
                )
                kwargs["stop_strings"] = None
        return super().generate(*args, tokenizer=tokenizer, **kwargs)

    def _checkpoint_tokenizer(self):
        if not hasattr(self, "_cached_tokenizer"):
            from transformers import AutoTokenizer

            source = getattr(self, "name_or_path", None) or self.config._name_or_path
            try:
                self._cached_tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False) if source else None
            except (OSError, ValueError):
                self._cached_tokenizer = None
        return self._cached_tokenizer


__all__ = ["TinyGPTVForConditionalGeneration", "TinyGPTVModel", "TinyGPTVPreTrainedModel"]
