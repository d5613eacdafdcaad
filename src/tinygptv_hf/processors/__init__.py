"""Image processor, processor and prompt templates. The two `*_tinygptv.py` files also ship as remote code."""

from .image_processing_tinygptv import ImageLoadError, TinyGPTVImageProcessor, load_image, to_rgb
from .processing_tinygptv import TinyGPTVProcessor

__all__ = ["ImageLoadError", "TinyGPTVImageProcessor", "TinyGPTVProcessor", "load_image", "to_rgb"]
