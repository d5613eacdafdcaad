"""TinyGPT-V: a frozen EVA ViT-g and BLIP-2 Q-Former feeding Phi-2 through two linear projections.

Layout follows transformers' Llava: `TinyGPTVModel` is the backbone (vision tower, Q-Former with its query tokens,
projector, language model) and `TinyGPTVForConditionalGeneration` adds the LM head, the loss and generation.
Images enter the text sequence at placeholder tokens: the processor expands every `<ImageHere>` into
`num_query_tokens` copies of `image_token_id`, and the model scatters the projected Q-Former output into them.

This file ships as remote code: it may import only pip packages and siblings in its own folder.
"""

import copy
import warnings

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.initialization import copy_, normal_
from transformers.modeling_outputs import MultimodalBaseModelOutputWithPast, MultimodalCausalLMOutputWithPast
from transformers.modeling_utils import local_torch_dtype, slice_logits_to_keep
from transformers.models.blip_2.modeling_blip_2 import (
    BaseModelOutputWithVisionQformerOutputs,
    Blip2QFormerModel,
    Blip2VisionModel,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, logging, torch_compilable_check
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple

from .configuration_tinygptv import TinyGPTVConfig
from .modeling_tinygptv_phi import TinyGPTVTextModel
from .quantizer_tinygptv import CPU_INT8_METHOD  # registers the CPU quantizers with transformers

logger = logging.get_logger(__name__)

# The backbone's parts by attribute name (`model.<name>` inside `TinyGPTVForConditionalGeneration`): the stages,
# the model cards, the stage-0 builder and the bitsandbytes skip list name the parts through these.
VISION_TOWER, QUERY_TOKENS, QFORMER = "vision_model", "query_tokens", "qformer"
PROJECTOR, LANGUAGE_MODEL, LM_HEAD = "multi_modal_projector", "language_model", "lm_head"
IMAGE_PATH = (VISION_TOWER, QUERY_TOKENS, QFORMER, PROJECTOR)


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
    # Custom attention functions (`AttentionInterface`) reach every attention module: the language model's through
    # Phi's attention, the vision tower's and Q-Former's through BLIP-2's. vLLM and SGLang serve the model through
    # their Transformers backend only with this flag (`is_backend_compatible()`), and switch the text config alone.
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    # As in BLIP-2: the Q-Former and its queries stay float32 when the rest is in half precision (hard-coded in
    # `TinyGPTVModel.__init__` too, since this list only acts when weights are loaded).
    _keep_in_fp32_modules_strict = ["query_tokens", "qformer"]
    _no_split_modules = ["Blip2EncoderLayer", "Blip2QFormerLayer", "TinyGPTVDecoderLayer"]
    _skip_keys_device_placement = "cache"
    # bitsandbytes quantizes only the language model's layers unless the caller lists `llm_int8_skip_modules`
    # (a list of their own replaces this one). The image path and the LM head are small and sensitive to rounding.
    # Patterns match from the start of a module name, hence the optional prefix of the backbone inside the LM class.
    _bnb_skip_modules = [*(rf"(model\.)?{part}" for part in IMAGE_PATH), LM_HEAD]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained` that raises on missing or unexpected weights instead of warning and
        initialising them randomly, and that keeps `_bnb_skip_modules` unquantized under bitsandbytes by default
        (transformers has a hook for neither). Pass `output_loading_info=True` to load a partial checkpoint and
        inspect the keys yourself. The CPU quantizations go through transformers' own `quantization_config`
        (`{"quant_method": "tinygptv_cpu_int8"}` or `"tinygptv_cpu_int4"`); `cpu_int8=True`, its former spelling,
        still works and warns."""
        if kwargs.pop("cpu_int8", False):
            if kwargs.get("quantization_config") is not None:
                raise ValueError(
                    "cpu_int8=True is a quantization of its own and cannot be combined with quantization_config; "
                    f'pass only quantization_config={{"quant_method": "{CPU_INT8_METHOD}"}}.'
                )
            warnings.warn(
                f'cpu_int8=True is deprecated: pass quantization_config={{"quant_method": "{CPU_INT8_METHOD}"}}.',
                FutureWarning,
                stacklevel=2,
            )
            kwargs["quantization_config"] = {"quant_method": CPU_INT8_METHOD}
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

    @property
    def dtype(self) -> torch.dtype:
        """The language model's dtype, the one the model was built or loaded in. (`PreTrainedModel.dtype` is the
        first parameter's, here the query tokens, float32 in every precision: `save_pretrained` would then record a
        bf16 model as float32 and a reload would double its size.)"""
        return self.get_input_embeddings().weight.dtype

    def _init_weights(self, module):
        """The vision tower and Q-Former are sub-models that initialise themselves first (with their own configs'
        ranges); what is left here is the query tokens (the Q-Former's range, as BLIP-2's original code) and, on
        request, the vision position table."""
        super()._init_weights(module)
        if isinstance(module, TinyGPTVModel):
            normal_(module.query_tokens, mean=0.0, std=self.config.qformer_config.initializer_range)
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


def interpolate_position_embedding(
    position_embedding: torch.Tensor, image_size: int, patch_size: int
) -> torch.Tensor:
    """Resize the patch grid bicubically (align_corners=False) in float32, keeping the CLS row: done once, stored,
    exactly as the original did at load time."""
    cls_row, grid = position_embedding[:, :1], position_embedding[:, 1:].float()
    old = int(round(grid.shape[1] ** 0.5))
    new = image_size // patch_size
    if old * old != grid.shape[1]:
        raise ValueError(f"position_embedding has {grid.shape[1]} patch rows, not a square grid.")
    if old == new:
        return position_embedding
    width = grid.shape[-1]
    grid = grid.reshape(1, old, old, width).permute(0, 3, 1, 2)
    grid = nn.functional.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new * new, width)
    return torch.cat([cls_row.float(), grid], dim=1).to(position_embedding.dtype)


class TinyGPTVModel(TinyGPTVPreTrainedModel):
    def __init__(self, config: TinyGPTVConfig):
        super().__init__(config)
        self.vision_model = Blip2VisionModel(config.vision_config)
        # EVA ViT-g has no final norm; BLIP-2's `ln_vision` (eps 1e-5) plays the role of HF's post_layernorm.
        self.vision_model.post_layernorm.eps = config.vision_layernorm_eps
        query_shape = (1, config.num_query_tokens, config.qformer_config.hidden_size)
        self.query_tokens = nn.Parameter(torch.zeros(query_shape, dtype=torch.float32))
        with local_torch_dtype(torch.float32):
            self.qformer = Blip2QFormerModel(config.qformer_config)
        self.multi_modal_projector = TinyGPTVProjector(config)
        self.language_model = TinyGPTVTextModel(config.text_config)
        self.post_init()

    def _adjust_missing_and_unexpected_keys(self, loading_info) -> None:
        """The backbone loads from a full checkpoint, whose LM head it has no place for. Not through
        `_keys_to_ignore_on_load_unexpected`: vLLM's and SGLang's Transformers backends build this class and turn
        those patterns into rules that drop the matching checkpoint weights, their own LM head's included."""
        super()._adjust_missing_and_unexpected_keys(loading_info)
        loading_info.unexpected_keys = {
            key for key in loading_info.unexpected_keys if not key.startswith(f"{LM_HEAD}.")
        }

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def set_image_size(self, image_size: int):
        """Move the model to another input size (stage 4 uses 448): the vision position table is interpolated
        once and stored, and the config says the new size. The caller sets the image processor's size to match."""
        vision_config = self.config.vision_config
        if vision_config.image_size == image_size:
            return
        if image_size % vision_config.patch_size:
            raise ValueError(
                f"image_size {image_size} is not a multiple of the patch size {vision_config.patch_size}."
            )
        embeddings = self.vision_model.embeddings
        table = interpolate_position_embedding(
            embeddings.position_embedding.data, image_size, vision_config.patch_size
        )
        embeddings.position_embedding = nn.Parameter(
            table, requires_grad=embeddings.position_embedding.requires_grad
        )
        embeddings.image_size = image_size
        embeddings.num_patches = (image_size // vision_config.patch_size) ** 2
        embeddings.num_positions = embeddings.num_patches + 1
        vision_config.image_size = image_size

    def train(self, mode: bool = True):
        """A frozen vision tower or Q-Former stays in eval mode (no dropout), as the original's `disabled_train`."""
        super().train(mode)
        for tower in (self.vision_model, self.qformer):
            if not any(parameter.requires_grad for parameter in tower.parameters()):
                tower.eval()
        return self

    @can_return_tuple
    def get_image_features(
        self, pixel_values: torch.FloatTensor, **kwargs: Unpack[TransformersKwargs]
    ) -> tuple | BaseModelOutputWithVisionQformerOutputs:
        """BLIP-2's contract: the vision tower's output (`last_hidden_state`, and `hidden_states`/`attentions` when
        asked for), the Q-Former's in `qformer_outputs`, and the image embeddings for the language model,
        `num_query_tokens` per image, in `pooler_output` (batch, queries, text width)."""
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must have shape (batch, 3, height, width), got {tuple(pixel_values.shape)}"
            )
        expected = self.config.vision_config.image_size
        if pixel_values.shape[-2:] != (expected, expected):
            raise ValueError(
                f"pixel_values are {pixel_values.shape[-2]}x{pixel_values.shape[-1]} but this checkpoint's vision "
                f"tower takes {expected}x{expected}; use the checkpoint's own processor."
            )
        vision_outputs = self.vision_model(pixel_values=pixel_values, return_dict=True, **kwargs)
        image_embeds = vision_outputs.last_hidden_state.to(self.query_tokens.dtype)
        image_attention_mask = torch.ones(
            image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device
        )
        qformer_outputs = self.qformer(
            query_embeds=self.query_tokens.expand(image_embeds.shape[0], -1, -1),
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_attention_mask,
            return_dict=True,
        )
        # The projector's own compute dtype, read from its bias: under FSDP2 mixed precision it computes in bf16
        # while the (separately sharded) embedding table still reads float32, and a quantized projector's weight is
        # int8 or int4 while its bias keeps the dtype its inputs take.
        compute_dtype = self.multi_modal_projector.linear_1.bias.dtype
        image_features = self.multi_modal_projector(qformer_outputs.last_hidden_state.to(compute_dtype))
        return BaseModelOutputWithVisionQformerOutputs(
            last_hidden_state=vision_outputs.last_hidden_state,
            pooler_output=image_features,
            hidden_states=vision_outputs.hidden_states,
            attentions=vision_outputs.attentions,
            vision_outputs=vision_outputs,
            qformer_outputs=qformer_outputs,
        )

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.BoolTensor:
        """Positions of the image tokens, (batch, sequence, 1), after checking that they match the number of image
        embeddings. Without `input_ids`, they are where `inputs_embeds` hold the image token's embedding."""
        image_token_id = self.config.image_token_id
        if input_ids is not None:
            mask = input_ids == image_token_id
        else:
            if image_token_id >= self.config.text_config.vocab_size:
                raise ValueError(
                    f"pixel_values with inputs_embeds need the image token (id {image_token_id}) to have an embedding "
                    f"to find the placeholders by, but the vocabulary has {self.config.text_config.vocab_size} "
                    "rows; pass input_ids instead."
                )
            image_embedding = self.get_input_embeddings()(
                torch.tensor(image_token_id, dtype=torch.long, device=inputs_embeds.device)
            )
            mask = (inputs_embeds == image_embedding).all(-1)
        n_tokens = mask.sum()
        torch_compilable_check(
            n_tokens * inputs_embeds.shape[-1] == image_features.numel(),
            lambda: (
                f"The inputs hold {int(n_tokens)} image tokens (id {image_token_id}) but {image_features.shape[0]} "
                f"image(s) give {image_features.shape[0] * image_features.shape[1]} embeddings "
                f"({self.config.num_query_tokens} per image): the number of images must match the number of "
                "<ImageHere> placeholders."
            ),
        )
        return mask.unsqueeze(-1)

    def embed_tokens(self, input_ids: torch.LongTensor) -> torch.Tensor:
        # The placeholder id need not have an embedding row: its rows are overwritten by image features.
        text_ids = input_ids.masked_fill(input_ids == self.config.image_token_id, 0)
        return self.get_input_embeddings()(text_ids)

    @can_return_tuple
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
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | MultimodalBaseModelOutputWithPast:
        """As LLaVA's, the only check on the data is the image/placeholder count. The processor refuses placeholders
        without images and prompts longer than the context, and `generate` keeps within the context; the length is
        not limited here, so that RoPE scaling set in the config extends the context."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)

        image_outputs = None
        if pixel_values is not None:
            image_outputs = self.get_image_features(pixel_values, return_dict=True, **kwargs)
            image_features = image_outputs.pooler_output.to(inputs_embeds.device, inputs_embeds.dtype)
            mask = self.get_placeholder_mask(input_ids, inputs_embeds, image_features)
            inputs_embeds = inputs_embeds.masked_scatter(mask, image_features)

        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        return MultimodalBaseModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=image_outputs,
        )


class TinyGPTVForConditionalGeneration(TinyGPTVPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {}
    # The backbone's plans come from the text config; the LM head splits by vocabulary and gathers the logits.
    _tp_plan = {LM_HEAD: "colwise_gather_output"}
    _pp_plan = {LM_HEAD: (["hidden_states"], ["logits"])}

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

    def set_image_size(self, image_size: int):
        """See `TinyGPTVModel.set_image_size`."""
        self.model.set_image_size(image_size)

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def get_image_features(
        self, pixel_values: torch.FloatTensor, **kwargs: Unpack[TransformersKwargs]
    ) -> tuple | BaseModelOutputWithVisionQformerOutputs:
        return self.model.get_image_features(pixel_values, **kwargs)

    @can_return_tuple
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
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | MultimodalCausalLMOutputWithPast:
        """`labels` use -100 (or `ignore_index`) for ignored positions and are shifted inside, unless the caller
        gives them already shifted as `shift_labels` (sequence parallelism). Labels on image placeholders, as
        generic collators leave them, are ignored. With Trainer, `num_items_in_batch` arrives through kwargs so the
        loss stays a per-token mean under gradient accumulation and DDP."""
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        # A strided slice would make torch's CPU bf16 linear (and bitsandbytes' 4-bit layers, which call it) copy
        # the LM head's weight once per sequence of the batch (2 GB for Phi-2's head at batch 8); copy the rows.
        logits = self.lm_head(hidden_states.contiguous())

        loss = None
        shift_labels = kwargs.get("shift_labels")
        if labels is not None or shift_labels is not None:
            ignore_index, image_token_id = kwargs.get("ignore_index", -100), self.config.image_token_id
            if labels is not None:
                labels = labels.masked_fill(labels == image_token_id, ignore_index)
            if shift_labels is not None:
                kwargs["shift_labels"] = shift_labels.masked_fill(
                    shift_labels == image_token_id, ignore_index
                )
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return MultimodalCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=outputs.image_outputs,
        )

    def generate(self, inputs=None, generation_config=None, *, tokenizer=None, **kwargs):
        """`GenerationMixin.generate`, with two additions.

        Generation stops on the end symbol (`stop_strings`, e.g. "###"), which needs the caller's tokenizer
        (`tokenizer=processor.tokenizer`; the pipeline, chat and evaluation pass it). Without one, generation runs
        to `max_new_tokens` with a warning, where transformers would raise.

        The length asked for is kept within the context (`max_position_embeddings`): a larger `max_new_tokens`
        (lmms-eval asks for 4096) or `max_length` is lowered with a warning, and a prompt that leaves no room for
        an answer is refused.
        """
        kwargs["generation_config"] = generation_config
        stop_strings = self._generation_setting("stop_strings", kwargs)
        if stop_strings and tokenizer is None:
            logger.warning(
                "The generation config stops on %r, which needs the tokenizer; none was passed, so generation runs "
                "to max_new_tokens. Pass tokenizer=processor.tokenizer to stop at the end symbol.",
                stop_strings,
            )
            kwargs["stop_strings"] = None
        prompt = next(
            (
                value
                for value in (kwargs.get("inputs_embeds"), inputs, kwargs.get("input_ids"))
                if value is not None
            ),
            None,
        )
        if prompt is not None:
            self._fit_to_context(prompt.shape[1], kwargs)
        return super().generate(inputs, tokenizer=tokenizer, **kwargs)

    def _generation_setting(self, name: str, kwargs: dict):
        """The value `generate` will use: the keyword argument, else the caller's generation config, else the
        model's own (transformers fills a caller's unset fields from the model's generation config)."""
        if name in kwargs:
            return kwargs[name]
        caller = kwargs.get("generation_config")
        value = getattr(caller, name, None) if caller is not None else None
        return value if value is not None else getattr(self.generation_config, name, None)

    def _fit_to_context(self, prompt_length: int, kwargs: dict) -> None:
        context = self.config.text_config.max_position_embeddings
        if prompt_length >= context:
            raise ValueError(
                f"The prompt is {prompt_length} tokens long (each image counts {self.config.num_query_tokens}) but "
                f"the model's context holds {context}, which leaves no room for an answer; shorten the prompt."
            )
        max_new_tokens = self._generation_setting("max_new_tokens", kwargs)
        max_length = self._generation_setting("max_length", kwargs)
        if max_new_tokens is not None and prompt_length + max_new_tokens > context:
            logger.warning_once(
                "max_new_tokens=%d does not fit after the prompt in the model's %d-token context; generation stops "
                "at the end of the context.",
                max_new_tokens,
                context,
            )
            kwargs["max_new_tokens"] = context - prompt_length
        elif max_new_tokens is None and max_length is not None and max_length > context:
            logger.warning_once(
                "max_length=%d exceeds the model's %d-token context; using %d.", max_length, context, context
            )
            kwargs["max_length"] = context


__all__ = ["TinyGPTVForConditionalGeneration", "TinyGPTVModel", "TinyGPTVPreTrainedModel"]
