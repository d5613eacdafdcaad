"""What running the Q-Former in bf16 does to the image features, at the paper's size (EVA ViT-g/14, BLIP-2
Q-Former, 32 queries, projector to Phi-2's width), on CPU.

vLLM's and SGLang's Transformers backends create every parameter in the model's one dtype, so under `--dtype
bfloat16` the Q-Former and its queries run in bf16, where transformers keeps them float32
(`_keep_in_fp32_modules_strict`). Both runs below share the same bf16 vision tower and bf16 projector, as the
engines' and transformers' bf16 loads do; they differ only in the Q-Former's dtype. Its float32 weights are what a
checkpoint stores, the bf16 run uses them rounded, as the engines load them.

Weights are random (uniform +-0.02, norms 1; no pretrained weights are reachable offline), so the figures show
rounding on the real shapes and depths, not on trained activations. Only one decoder layer of Phi-2 is built: the
image features never reach it. About 3 GB of memory.

    python benchmarks/qformer_bf16.py [--images 4]
"""

import argparse
import json
import random
import time
from io import BytesIO

import torch
from _common import machine, random_model
from PIL import Image
from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerModel

from tinygptv_hf import TinyGPTVModel
from tinygptv_hf.data.scenes import make_scene, render
from tinygptv_hf.presets import preset_config
from tinygptv_hf.processors import TinyGPTVImageProcessor


def images(count: int) -> list[Image.Image]:
    """Rendered scenes of the demo's synthetic world, and noise: flat colours and high-frequency detail."""
    scenes = [
        Image.open(BytesIO(render(make_scene(random.Random(seed), seed)))) for seed in range(count // 2)
    ]
    noise = [
        Image.fromarray(
            torch.randint(0, 256, (224, 224, 3), generator=torch.Generator().manual_seed(s)).byte().numpy()
        )
        for s in range(count - len(scenes))
    ]
    return scenes + noise


def compare(reference: torch.Tensor, other: torch.Tensor) -> dict:
    """Per query token (the unit the language model reads): cosine similarity and the largest absolute error."""
    reference, other = reference.float().flatten(0, 1), other.float().flatten(0, 1)
    cosine = torch.nn.functional.cosine_similarity(reference, other, dim=-1)
    return {
        "cosine_min": cosine.min().item(),
        "cosine_mean": cosine.mean().item(),
        "max_abs": (reference - other).abs().max().item(),
        "reference_max_abs": reference.abs().max().item(),
        "relative_rms": ((reference - other).pow(2).mean() / reference.pow(2).mean()).sqrt().item(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4)
    args = parser.parse_args()

    config = preset_config("phi2", text_config=dict(num_hidden_layers=1))
    model = random_model(TinyGPTVModel, config, dtype=torch.bfloat16, on=torch.device("cpu")).eval()
    model.qformer = random_model(
        Blip2QFormerModel, config.qformer_config, seed=1, on=torch.device("cpu")
    ).eval()
    queries = torch.empty_like(model.query_tokens, dtype=torch.float32).uniform_(
        -0.02, 0.02, generator=torch.Generator().manual_seed(2)
    )
    model.query_tokens = torch.nn.Parameter(queries, requires_grad=False)
    pixel_values = TinyGPTVImageProcessor(size={"height": 224, "width": 224})(
        images(args.images), return_tensors="pt"
    ).pixel_values

    results = {}
    with torch.no_grad():
        start = time.perf_counter()
        float32_qformer = model.get_image_features(pixel_values.to(torch.bfloat16)).pooler_output
        results["seconds_float32_qformer"] = time.perf_counter() - start
        model.qformer.to(torch.bfloat16)
        model.query_tokens.data = model.query_tokens.data.to(torch.bfloat16)
        start = time.perf_counter()
        bf16_qformer = model.get_image_features(pixel_values.to(torch.bfloat16)).pooler_output
        results["seconds_bf16_qformer"] = time.perf_counter() - start
    results["bf16_vs_float32_qformer"] = compare(float32_qformer, bf16_qformer)
    results["images"] = args.images
    results["feature_shape"] = list(bf16_qformer.shape)
    results["machine"] = machine()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
