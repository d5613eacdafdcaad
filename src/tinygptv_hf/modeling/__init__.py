"""Configuration and model classes. Every file in this folder also ships as remote code next to the weights."""

from .configuration_tinygptv import TinyGPTVConfig, TinyGPTVTextConfig
from .modeling_tinygptv import TinyGPTVForConditionalGeneration, TinyGPTVModel, TinyGPTVPreTrainedModel
from .modeling_tinygptv_phi import TinyGPTVDecoderLayer, TinyGPTVTextModel

__all__ = [
    "TinyGPTVConfig",
    "TinyGPTVDecoderLayer",
    "TinyGPTVForConditionalGeneration",
    "TinyGPTVModel",
    "TinyGPTVPreTrainedModel",
    "TinyGPTVTextConfig",
    "TinyGPTVTextModel",
]
