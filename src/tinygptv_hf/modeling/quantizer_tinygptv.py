"""CPU inference quantizers, registered with transformers: `quant_method` "tinygptv_cpu_int8" (int8 per output
channel) and "tinygptv_cpu_int4" (int4 in groups with a scale and a zero each). The layers and their kernels are
in `integration_tinygptv.py`, the choice of kernels per CPU in `cpu_plan_tinygptv.py`.

`from_pretrained(..., quantization_config=TinyGPTVCpuInt8Config())` (or the dict `{"quant_method":
"tinygptv_cpu_int8"}`; likewise int4) quantizes each weight as it is read from the checkpoint (the float weight is
dropped at once, so no second copy is ever held), and `save_pretrained` writes the quantized weights with the
config, so a saved folder loads quantized again without being asked.

This file ships as remote code: it may import only pip packages and siblings in its own folder.
"""

import torch
from transformers.core_model_loading import ConversionOps
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING
from transformers.quantizers.quantizers_utils import get_module_from_name
from transformers.utils import logging
from transformers.utils.quantization_config import QuantizationConfigMixin

from .cpu_plan_tinygptv import cpu_kernel_plan, float32_paths
from .integration_tinygptv import (
    CpuInt4Linear,
    CpuInt8Linear,
    prepare_for_kernels,
    quantize_int4,
    quantize_int8,
    replace_linear_layers,
)

CPU_INT8_METHOD = "tinygptv_cpu_int8"
CPU_INT4_METHOD = "tinygptv_cpu_int4"
INT4_GROUP_SIZES = (32, 64, 128)

logger = logging.get_logger(__name__)


class TinyGPTVCpuQuantizationConfig(QuantizationConfigMixin):
    """What both CPU quantizations share.

    Args:
        modules_to_not_convert: Linear layers to keep in float32 (transformers' patterns: a module-name prefix, a
            regex or a suffix); by default every Linear layer is quantized, the LM head, vision tower and Q-Former
            included, which is what fits the full-size model in 5 GB (int8) or 3 GB (int4).
    """

    bits: int
    quant_method: str

    def __init__(self, modules_to_not_convert: list[str] | None = None):
        self.modules_to_not_convert = modules_to_not_convert

    def post_init(self):
        if self.modules_to_not_convert is not None and not isinstance(self.modules_to_not_convert, list):
            raise ValueError(
                f"modules_to_not_convert must be a list of names, got {self.modules_to_not_convert!r}."
            )


class TinyGPTVCpuInt8Config(TinyGPTVCpuQuantizationConfig):
    """Int8 weight-only CPU inference: symmetric int8 per output channel, float32 scales.

    Args:
        max_decode_rows: layers that get at most this many rows (tokens x sequences) use the int8 kernel; more rows
            use weights dequantized to the plan's `many_rows_dtype` (on the 2-core AMD EPYC of docs/benchmarks.md
            the int8 kernel stops winning between 16 and 55 rows).
        modules_to_not_convert: see `TinyGPTVCpuQuantizationConfig`.
    """

    bits = 8

    def __init__(self, max_decode_rows: int = 16, modules_to_not_convert: list[str] | None = None, **kwargs):
        super().__init__(modules_to_not_convert)
        self.quant_method = CPU_INT8_METHOD
        self.max_decode_rows = max_decode_rows
        self.post_init()

    def post_init(self):
        super().post_init()
        if not isinstance(self.max_decode_rows, int) or self.max_decode_rows < 0:
            raise ValueError(f"max_decode_rows must be a non-negative integer, got {self.max_decode_rows!r}.")


class TinyGPTVCpuInt4Config(TinyGPTVCpuQuantizationConfig):
    """Int4 weight-only CPU inference: each group of `group_size` input features of an output channel has its own
    bfloat16 scale and zero, fitted by least squares (docs/cpu-inference.md measures the drift). Layers whose input
    width is not a multiple of `group_size` stay float32.

    Args:
        group_size: 32, 64 or 128 input features per group (smaller: closer to float32, 0.5 bit a weight more
            than 128 for the scales and zeros at 32).
        modules_to_not_convert: see `TinyGPTVCpuQuantizationConfig`.
    """

    bits = 4

    def __init__(self, group_size: int = 32, modules_to_not_convert: list[str] | None = None, **kwargs):
        super().__init__(modules_to_not_convert)
        self.quant_method = CPU_INT4_METHOD
        self.group_size = group_size
        self.post_init()

    def post_init(self):
        super().post_init()
        if self.group_size not in INT4_GROUP_SIZES:
            raise ValueError(f"group_size must be one of {INT4_GROUP_SIZES}, got {self.group_size!r}.")


class QuantizeOnLoad(ConversionOps):
    """Turns a float weight read from the checkpoint into the quantized tensors of its layer."""

    def __init__(self, hf_quantizer):
        self.hf_quantizer = hf_quantizer

    def convert(self, input_dict, full_layer_name=None, **kwargs):
        (weight,) = next(iter(input_dict.values()))
        config = self.hf_quantizer.quantization_config
        if config.bits == 8:
            quantized, scale = quantize_int8(weight)
            return {full_layer_name: quantized, f"{full_layer_name}_scale": scale}
        codes, scale_zero = quantize_int4(weight, config.group_size)
        return {full_layer_name: codes, f"{full_layer_name}_scale_zero": scale_zero}


class TinyGPTVCpuQuantizer(HfQuantizer):
    """Replaces the Linear layers before loading and quantizes their weights as they are read (or reads them
    quantized from a folder saved this way); CPU only, inference only."""

    requires_calibration = False
    quantization_config: TinyGPTVCpuQuantizationConfig

    def validate_environment(self, device_map=None, **kwargs):
        name = f"{self.quantization_config.quant_method}"
        kernel = (
            "_weight_int8pack_mm" if self.quantization_config.bits == 8 else "_weight_int4pack_mm_for_cpu"
        )
        if not hasattr(torch.ops.aten, kernel):
            raise ImportError(
                f"{name} needs torch's {kernel} kernel (torch >= 2.6); this is {torch.__version__}."
            )
        places = set(device_map.values()) if isinstance(device_map, dict) else {device_map}
        off_cpu = {place for place in places if place is not None and torch.device(place).type != "cpu"}
        if off_cpu:
            raise ValueError(
                f"{name} runs on the CPU only, but device_map puts weights on {sorted(map(str, off_cpu))}; load "
                "with device_map='cpu' (or none), or use bf16 / bitsandbytes on a GPU."
            )

    def update_device_map(self, device_map):
        return device_map or {"": "cpu"}

    def update_dtype(self, dtype):
        """Everything that stays unquantized runs in float32, whatever the checkpoint holds or `dtype` asks (as
        transformers' own weight-only quantizers override it): the activations between layers stay float32."""
        if dtype not in (None, torch.float32):
            logger.info(
                f"{self.quantization_config.quant_method}: the unquantized parts load as float32, not {dtype}."
            )
        return torch.float32

    def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
        module, tensor_name = get_module_from_name(model, param_name)
        layer = isinstance(module, (CpuInt8Linear, CpuInt4Linear))
        return layer and tensor_name == "weight" and not self.pre_quantized

    def _process_model_before_weight_loading(self, model, **kwargs):
        if not replace_linear_layers(model, self.quantization_config):
            raise ValueError(
                f"{self.quantization_config.quant_method} found no Linear layer to quantize; check "
                "modules_to_not_convert (and, for int4, that some layer's input width is a multiple of group_size)."
            )

    def _process_model_after_weight_loading(self, model, **kwargs):
        """Layers made ready for their kernels, and the kernel plan made here, not in the first request (with the
        float32 paths' timings where int8 prompts multiply in float32)."""
        prepare_for_kernels(model)
        if self.quantization_config.bits == 8 and cpu_kernel_plan().many_rows_dtype == torch.float32:
            float32_paths()
        return model

    def get_quantize_ops(self):
        return QuantizeOnLoad(self)

    def is_serializable(self):
        return True

    @property
    def is_trainable(self) -> bool:
        return False


# The package and the remote-code copy of this file can both be imported in one process, and transformers refuses
# a second registration: the first serves both (their layers behave the same).
for _method, _config in ((CPU_INT8_METHOD, TinyGPTVCpuInt8Config), (CPU_INT4_METHOD, TinyGPTVCpuInt4Config)):
    if _method not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(_method)(_config)
    if _method not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(_method)(TinyGPTVCpuQuantizer)
