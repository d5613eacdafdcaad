"""transformers' own common tests (model, config, processor, image processor) run against TinyGPT-V's classes.

The mixins come from the source distribution of the installed transformers (see `transformers_common_support`).
The tiny tester follows transformers' LLaVA and BLIP-2 testers, on `core_support.DISTINCT_WIDTHS`: its vision tower,
Q-Former, projector and language model all have different widths, so a tensor taken from the wrong place cannot
pass a shape check.
"""

import shutil
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import pytest
import torch
from core_support import DISTINCT_WIDTHS, random_image
from transformers import PreTrainedModel
from transformers.models.auto import modeling_auto
from transformers_common_support import common_tests

from tinygptv_hf import (
    TinyGPTVConfig,
    TinyGPTVForConditionalGeneration,
    TinyGPTVImageProcessor,
    TinyGPTVModel,
    TinyGPTVPreTrainedModel,
    TinyGPTVProcessor,
)
from tinygptv_hf.processors.templates import CHAT_TEMPLATES
from tinygptv_hf.tokenization import build_tiny_tokenizer

COMMON = common_tests()
ModelTesterMixin = COMMON.test_modeling_common.ModelTesterMixin
GenerationTesterMixin = COMMON.test_modeling_common.GenerationTesterMixin
floats_tensor = COMMON.test_modeling_common.floats_tensor
ids_tensor = COMMON.test_modeling_common.ids_tensor
ConfigTester = COMMON.test_configuration_common.ConfigTester
ProcessorTesterMixin = COMMON.test_processing_common.ProcessorTesterMixin
ImageProcessingTester = COMMON.test_image_processing_common.ImageProcessingTester
ImageProcessingTestMixin = COMMON.test_image_processing_common.ImageProcessingTestMixin

pytestmark = pytest.mark.usefixtures("one_thread")

# The mixin tells a class's task (which inputs get labels, which tests apply) from transformers' own lists of
# built-in models; TinyGPT-V goes where LLaVA is listed.
TASK_LISTS = {
    "MODEL_MAPPING_NAMES": "TinyGPTVModel",
    "MODEL_FOR_PRETRAINING_MAPPING_NAMES": "TinyGPTVForConditionalGeneration",
    "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES": "TinyGPTVForConditionalGeneration",
    "MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES": "TinyGPTVForConditionalGeneration",
}


class TinyGPTVModelTester:
    """Config and inputs for the model mixin: each sequence holds one image (its query tokens first), then text."""

    def __init__(self, parent, text_length=7):
        self.parent = parent
        # The SDPA-vs-eager test runs a batch of 7 and pads a smaller one with random ids and random images, which
        # breaks the image/placeholder count; 7 rows avoid the padding.
        self.batch_size = 7
        self.is_training = True
        self.vision_config = DISTINCT_WIDTHS["vision_config"]
        self.text_config = DISTINCT_WIDTHS["text_config"]
        self.num_query_tokens = DISTINCT_WIDTHS["num_query_tokens"]
        self.image_token_id = DISTINCT_WIDTHS["image_token_id"]
        self.seq_length = self.num_query_tokens + text_length
        # What the mixin reads about the language model's outputs.
        self.vocab_size = self.text_config["vocab_size"]
        self.hidden_size = self.text_config["hidden_size"]
        self.num_hidden_layers = self.text_config["num_hidden_layers"]
        self.num_attention_heads = self.text_config["num_attention_heads"]

    def get_config(self):
        return TinyGPTVConfig(**DISTINCT_WIDTHS)

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        size = self.vision_config["image_size"]
        pixel_values = floats_tensor([self.batch_size, 3, size, size])
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 4) + 4
        input_ids[:, : self.num_query_tokens] = self.image_token_id
        attention_mask = torch.ones_like(input_ids)
        return config, {
            "pixel_values": pixel_values,
            "input_ids": input_ids,
            "attention_mask": attention_mask,
        }


class TinyGPTVModelTest(ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    all_model_classes = (TinyGPTVModel, TinyGPTVForConditionalGeneration)
    _is_composite = True
    # Tests that build their own inputs keep the images with the image tokens (as Florence-2's tester does).
    additional_model_inputs = ["pixel_values"]
    # The mixin dates a model by a "# Copyright YEAR" line, which our files do not carry; run the init test anyway.
    test_can_init_all_missing_weights_before_2023 = True

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        for name, class_name in TASK_LISTS.items():
            cls.enterClassContext(mock.patch.dict(getattr(modeling_auto, name), {"tinygptv": class_name}))

    def setUp(self):
        self.model_tester = TinyGPTVModelTester(self)
        self.config_tester = ConfigTester(
            self,
            config_class=TinyGPTVConfig,
            has_text_modality=False,
            common_properties=["image_token_id", "num_query_tokens"],
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_can_init_all_missing_weights(self):
        # The test loads an empty state dict to see `_init_weights` fill every weight; TinyGPT-V's from_pretrained
        # refuses missing weights by design, so the test runs on transformers' own from_pretrained.
        def lenient(cls, *args, **kwargs):
            return PreTrainedModel.from_pretrained.__func__(cls, *args, **kwargs)

        with mock.patch.object(TinyGPTVPreTrainedModel, "from_pretrained", classmethod(lenient)):
            super().test_can_init_all_missing_weights()


class TinyGPTVImageProcessingTester(ImageProcessingTester):
    def __init__(self, parent, **kwargs):
        kwargs.setdefault("size", {"height": 18, "width": 18})
        super().__init__(parent, min_resolution=20, max_resolution=60, **kwargs)

    def _get_image_processing_classes(self):
        # The mixin looks the classes up by the test file's folder in transformers' repository layout.
        return {"pil": TinyGPTVImageProcessor}


class TinyGPTVImageProcessingTest(ImageProcessingTestMixin, unittest.TestCase):
    image_processor_tester_class = TinyGPTVImageProcessingTester

    @unittest.skip(
        "Asks models added to transformers' repository since 2025-09 for a torchvision backend. This package runs "
        "without torchvision: the PIL backend reproduces the original's bicubic PIL resize."
    )
    def test_new_models_require_torchvision_backend(self):
        pass


class TinyGPTVProcessorTest(ProcessorTesterMixin, unittest.TestCase):
    processor_class = TinyGPTVProcessor

    @classmethod
    def setUpClass(cls):
        # transformers' processors are not registered for remote code; ours is, and ProcessorMixin.save_pretrained
        # then adds `auto_map` to the processor it saves but from_pretrained drops it from the one it loads.
        cls.enterClassContext(mock.patch.object(TinyGPTVProcessor, "_auto_class", None))
        # Some tests read images from the Hub (hf-internal-testing fixtures), which these tests do not reach. Local
        # images of the same names stand in, found by `url_to_local_path` as transformers' CI finds its copies.
        common = COMMON.test_processing_common
        folder = Path(tempfile.mkdtemp())
        cls.addClassCleanup(shutil.rmtree, folder)

        def local_copy(url):
            path = folder / url.rsplit("/", 1)[-1]
            return str(path) if path.exists() else url

        for seed, url in enumerate(common.MODALITY_INPUT_DATA["images"]):
            random_image(seed, 40, 30).save(folder / url.rsplit("/", 1)[-1])
        images = [local_copy(url) for url in common.MODALITY_INPUT_DATA["images"]]
        cls.enterClassContext(mock.patch.object(common, "url_to_local_path", local_copy))
        cls.enterClassContext(mock.patch.dict(common.MODALITY_INPUT_DATA, {"images": images}))
        super().setUpClass()

    @classmethod
    def _setup_tokenizer(cls):
        return build_tiny_tokenizer()

    @classmethod
    def _setup_image_processor(cls):
        return TinyGPTVImageProcessor(size={"height": 28, "width": 28})

    @staticmethod
    def prepare_processor_dict():
        # One template, as transformers' processors have; the named templates are tested in test_core_processor.
        return {"num_query_tokens": 3, "chat_template": CHAT_TEMPLATES["conversation"]}
