"""TinyGPT-V (arXiv 2312.16862) as a Hugging Face transformers model package.

Importing the package registers the classes with the Auto classes, so an installed package serves checkpoints
without remote code; saved folders still carry the code for machines that do not have the package.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from .modeling import (
    TinyGPTVConfig,
    TinyGPTVCpuInt4Config,
    TinyGPTVCpuInt8Config,
    TinyGPTVForConditionalGeneration,
    TinyGPTVModel,
    TinyGPTVPreTrainedModel,
    TinyGPTVTextConfig,
    TinyGPTVTextModel,
)
from .processors import TinyGPTVImageProcessor, TinyGPTVProcessor

__version__ = "0.1.0"

AutoConfig.register(TinyGPTVConfig.model_type, TinyGPTVConfig, exist_ok=True)
AutoConfig.register(TinyGPTVTextConfig.model_type, TinyGPTVTextConfig, exist_ok=True)
AutoModel.register(TinyGPTVConfig, TinyGPTVModel, exist_ok=True)
AutoModelForImageTextToText.register(TinyGPTVConfig, TinyGPTVForConditionalGeneration, exist_ok=True)
AutoImageProcessor.register(TinyGPTVConfig, slow_image_processor_class=TinyGPTVImageProcessor, exist_ok=True)
AutoProcessor.register(TinyGPTVConfig, TinyGPTVProcessor, exist_ok=True)

# Saving copies the code next to the weights, so a folder also loads where the package is not installed.
TinyGPTVConfig.register_for_auto_class()
TinyGPTVModel.register_for_auto_class("AutoModel")
TinyGPTVForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
TinyGPTVImageProcessor.register_for_auto_class("AutoImageProcessor")
TinyGPTVProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "TinyGPTVConfig",
    "TinyGPTVCpuInt4Config",
    "TinyGPTVCpuInt8Config",
    "TinyGPTVForConditionalGeneration",
    "TinyGPTVImageProcessor",
    "TinyGPTVModel",
    "TinyGPTVPreTrainedModel",
    "TinyGPTVProcessor",
    "TinyGPTVTextConfig",
    "TinyGPTVTextModel",
]
