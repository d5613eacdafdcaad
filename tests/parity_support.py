"""Reading the parity fixtures recorded from the original code: where they are, and the model each case needs.

Everything about a case (sizes, ids, LoRA scaling) is read from its own files, so another fixture set with other
sizes and seeds can be dropped in through TINYGPTV_PARITY_FIXTURES.
"""

import json
import os
from pathlib import Path

from safetensors.torch import load_file

from tinygptv_hf import TinyGPTVConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO_ROOT / "tests" / "fixtures" / "parity" / "original"


def fixture_root() -> Path:
    return Path(os.environ.get("TINYGPTV_PARITY_FIXTURES", DEFAULT_ROOT))


def case_dirs() -> list[Path]:
    cases = sorted(fixture_root().glob("case_*"))
    if not cases:
        raise FileNotFoundError(f"No case_* folders under {fixture_root()} (set TINYGPTV_PARITY_FIXTURES).")
    return cases


class ParityCase:
    def __init__(self, folder: Path):
        self.folder = folder
        self.meta = json.loads((folder / "config.json").read_text())
        self.inputs = load_file(folder / "inputs.safetensors")
        self.outputs = load_file(folder / "outputs.safetensors")

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def lora_scaling(self) -> float:
        return float(self.meta["lora"]["scaling"])

    @property
    def tokens(self) -> dict:
        return self.meta["tokenizer_stand_in"]

    def config(self) -> TinyGPTVConfig:
        vision, bert, phi = (
            self.meta["vision"],
            self.meta["qformer"]["bert_config"],
            self.meta["phi"]["config"],
        )
        qformer = self.meta["qformer"]
        image_token_id = phi[
            "vocab_size"
        ]  # the stand-in has no placeholder token: any id outside the vocabulary
        return TinyGPTVConfig(
            vision_config=dict(
                hidden_size=vision["embed_dim"],
                intermediate_size=vision["mlp_hidden_dim"],
                num_hidden_layers=vision["depth"],
                num_attention_heads=vision["num_heads"],
                image_size=vision["img_size"],
                patch_size=vision["patch_size"],
                layer_norm_eps=vision["norm_eps"],
                hidden_act="gelu",
            ),
            qformer_config=dict(
                hidden_size=bert["hidden_size"],
                num_hidden_layers=bert["num_hidden_layers"],
                num_attention_heads=bert["num_attention_heads"],
                intermediate_size=bert["intermediate_size"],
                layer_norm_eps=bert["layer_norm_eps"],
                hidden_act=bert["hidden_act"],
                encoder_hidden_size=qformer["encoder_width"],
                cross_attention_frequency=qformer["cross_attention_freq"],
            ),
            text_config=dict(
                vocab_size=phi["vocab_size"],
                hidden_size=phi["hidden_size"],
                intermediate_size=phi["intermediate_size"],
                num_hidden_layers=phi["num_hidden_layers"],
                num_attention_heads=phi["num_attention_heads"],
                partial_rotary_factor=phi["partial_rotary_factor"],
                rope_theta=phi["rope_theta"],
                max_position_embeddings=phi["max_position_embeddings"],
                layer_norm_eps=phi["layer_norm_eps"],
                hidden_act=phi["hidden_act"],
                resid_pdrop=phi["resid_pdrop"],
                embd_pdrop=phi["embd_pdrop"],
                bos_token_id=self.tokens["bos_token_id"],
                eos_token_id=self.tokens["eos_token_id"],
            ),
            num_query_tokens=qformer["num_query_token"],
            projection_hidden_size=self.meta["projection"]["proj_mid_width"],
            vision_layernorm_eps=vision["ln_vision_eps"],
            image_token_id=image_token_id,
        )
