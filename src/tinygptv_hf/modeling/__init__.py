"""Configuration and model classes. Every file in this folder also ships as remote code next to the weights."""

from .configuration_tinygptv import TinyGPTVConfig, TinyGPTVTextConfig
from .modeling_tinygptv import TinyGPTVForConditionalGeneration, TinyGPTVModel, TinyGPTVPreTrainedModel
from .modeling_tinygptv_phi import TinyGPTVDecoderLayer, TinyGPTVTextModel
from .quantization_tinygptv import (
    CpuFloat32Linear,
    CpuInt8Linear,
    TinyGPTVCpuInt8Config,
    to_float32_in_place,
    use_cpu_gemm_choice,
)

__all__ = [
    "CpuFloat32Linear",
    "CpuInt8Linear",
    "TinyGPTVConfig",
    "TinyGPTVCpuInt8Config",
    "TinyGPTVDecoderLayer",
    "TinyGPTVForConditionalGeneration",
    "TinyGPTVModel",
    "TinyGPTVPreTrainedModel",
    "TinyGPTVTextConfig",
    "TinyGPTVTextModel",
    "to_float32_in_place",
    "use_cpu_gemm_choice",
]
