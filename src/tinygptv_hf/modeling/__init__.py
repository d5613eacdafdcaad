"""Configuration and model classes. Every file in this folder also ships as remote code next to the weights."""

from .configuration_tinygptv import TinyGPTVConfig, TinyGPTVTextConfig
from .cpu_plan_tinygptv import CpuKernelPlan, Float32Paths, cpu_kernel_plan, float32_paths
from .integration_tinygptv import CpuInt4Linear, CpuInt8Linear
from .modeling_tinygptv import TinyGPTVForConditionalGeneration, TinyGPTVModel, TinyGPTVPreTrainedModel
from .modeling_tinygptv_phi import TinyGPTVDecoderLayer, TinyGPTVTextModel
from .quantizer_tinygptv import TinyGPTVCpuInt4Config, TinyGPTVCpuInt8Config, TinyGPTVCpuQuantizer

__all__ = [
    "CpuInt4Linear",
    "CpuInt8Linear",
    "CpuKernelPlan",
    "Float32Paths",
    "TinyGPTVConfig",
    "TinyGPTVCpuInt4Config",
    "TinyGPTVCpuInt8Config",
    "TinyGPTVCpuQuantizer",
    "TinyGPTVDecoderLayer",
    "TinyGPTVForConditionalGeneration",
    "TinyGPTVModel",
    "TinyGPTVPreTrainedModel",
    "TinyGPTVTextConfig",
    "TinyGPTVTextModel",
    "cpu_kernel_plan",
    "float32_paths",
]
