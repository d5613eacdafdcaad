"""Synthetic TinyGPT-V releases: random weights of a tiny architecture written in every layout users hold.

The ground truth lives in this model's names; the writers go the other way (our names -> the original's fused,
prefixed and split files), so a conversion that reads them back must reproduce the truth exactly. All values are
float16-representable, so files stored in half precision lose nothing.
"""

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import Blip2Config, PhiConfig

from tinygptv_hf import TinyGPTVForConditionalGeneration
from tinygptv_hf.checkpoint import fit_tokenizer
from tinygptv_hf.presets import preset_config

LORA_R, LORA_ALPHA = 8, 16
STAGE_PREFIX = {1: "llama_model.model.", 2: "llama_model.base_model.model.model."}
# Trainable norm weights the original saves in every stage file
# (docs/original-differences.md#released-checkpoints).
STAGE_NORMS = re.compile(
    r"^model\.language_model\.(layers\.\d+\.(input_layernorm|post_layernorm|self_attn\.[qk]_layernorm)|final_layernorm)\.weight$"
)


def tiny_config(tokenizer):
    # The paper's projector width: the default config of `tinygptv convert` (phi2 preset) keeps it.
    return fit_tokenizer(preset_config("tiny", projection_hidden_size=4096), tokenizer)


def random_like(shape, generator) -> torch.Tensor:
    return (torch.randn(shape, generator=generator) * 0.5).half().float()


class SyntheticRelease:
    """Truth in our names (`weights`, LoRA per our module), and the original release's files built from it."""

    def __init__(self, config, seed=0):
        self.config = config
        self.heads = config.text_config.num_attention_heads
        generator = torch.Generator().manual_seed(seed)
        with torch.device("meta"):
            shapes = {
                key: value.shape
                for key, value in TinyGPTVForConditionalGeneration(config).state_dict().items()
            }
        self.weights = {key: random_like(shape, generator) for key, shape in shapes.items()}
        hidden = config.vision_config.hidden_size
        for key in self.weights:
            if key.endswith("self_attn.qkv.bias"):
                self.weights[key][hidden : 2 * hidden] = 0  # EVA's key projection has no bias
            if re.search(r"[qk]_layernorm\.bias$", key):
                self.weights[key].zero_()  # never stored by the original: always zero
        # What the pretrained files hold where a stage file overrides it: must not survive the conversion.
        self.pretrained = {key: random_like(value.shape, generator) for key, value in self.weights.items()}
        text = config.text_config
        self.lora = {}
        for layer in range(text.num_hidden_layers):
            attention = f"model.language_model.layers.{layer}.self_attn"
            shared_a = random_like((LORA_R, text.hidden_size), generator)
            for proj in ("q_proj", "k_proj", "v_proj"):
                self.lora[f"{attention}.{proj}"] = (
                    shared_a,
                    random_like((text.hidden_size, LORA_R), generator),
                )
            dense = (
                random_like((LORA_R, text.hidden_size), generator),
                random_like((text.hidden_size, LORA_R), generator),
            )
            self.lora[f"{attention}.dense"] = dense
        self.generator = generator

    def merged(self) -> dict[str, torch.Tensor]:
        merged = dict(self.weights)
        for module, (a, b) in self.lora.items():
            merged[f"{module}.weight"] = merged[f"{module}.weight"] + (LORA_ALPHA / LORA_R) * (b @ a)
        return merged

    def fuse(self, q, k, v) -> torch.Tensor:
        """transformers-4.36 Phi's fused rows: per head [q, k, v] (docs/original-differences.md#fused-qkv)."""
        parts = [t.reshape(self.heads, -1, *t.shape[1:]) for t in (q, k, v)]
        return torch.stack(parts, dim=1).reshape(-1, *q.shape[1:])

    # --- the original wrapper's names -------------------------------------------------------------------------
    def original_state(self, weights=None, lora=True) -> dict[str, torch.Tensor]:
        """The MiniGPT-4 wrapper's state dict (LoRA-wrapped Phi, fused q/k/v, EVA q/v biases)."""
        weights = self.weights if weights is None else weights
        state = {"Qformer.bert.embeddings.position_ids": torch.arange(512).unsqueeze(0)}
        vision_width = self.config.vision_config.hidden_size
        for key, tensor in weights.items():
            if key.startswith("model.language_model.") or key.startswith("lm_head."):
                continue
            for pattern, target in ORIGINAL_VISION_NAMES:
                if re.search(pattern, key):
                    name = re.sub(pattern, target, key)
                    break
            else:
                raise AssertionError(f"no original name for {key}")
            if name.endswith("attn.qkv.bias"):
                block = name[: -len("qkv.bias")]
                state[block + "q_bias"] = tensor[:vision_width]
                state[block + "v_bias"] = tensor[2 * vision_width :]
            else:
                state[name] = tensor
        prefix = STAGE_PREFIX[2]
        for key, tensor in self.phi_fused(weights).items():
            state[
                "llama_model.base_model.model." + key if key.startswith("lm_head.") else prefix + key[6:]
            ] = tensor
        if lora:
            for layer in range(self.config.text_config.num_hidden_layers):
                attention = f"model.language_model.layers.{layer}.self_attn"
                (a, bq), (_, bk), (_, bv) = (
                    self.lora[f"{attention}.{p}"] for p in ("q_proj", "k_proj", "v_proj")
                )
                original = f"{prefix}layers.{layer}.self_attn"
                state[f"{original}.query_key_value.lora_A.weight"] = a
                state[f"{original}.query_key_value.lora_B.weight"] = self.fuse(bq, bk, bv)
                state[f"{original}.dense.lora_A.weight"], state[f"{original}.dense.lora_B.weight"] = (
                    self.lora[f"{attention}.dense"]
                )
        return state

    def phi_fused(self, weights, modified=True) -> dict[str, torch.Tensor]:
        """transformers-4.36 Phi names; `modified=False` leaves out TinyGPT-V's added norms (plain Phi-2)."""
        state = {}
        for key, tensor in weights.items():
            if key.startswith("lm_head."):
                state[key] = tensor
            elif key.startswith("model.language_model."):
                name = "model." + key[len("model.language_model.") :]
                if not modified and re.search(r"([qk]_layernorm|post_layernorm)\.", name):
                    continue
                if re.search(r"self_attn\.[kv]_proj\.", name):
                    continue
                if re.search(r"self_attn\.q_proj\.", name):
                    parts = [weights[key.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
                    state[name.replace("q_proj", "query_key_value")] = self.fuse(*parts)
                else:
                    state[name] = tensor
        return state

    def phi_split(self, weights, modified=False) -> dict[str, torch.Tensor]:
        """Today's microsoft/phi-2 names (separate q/k/v)."""
        state = {}
        for key, tensor in weights.items():
            if key.startswith("lm_head."):
                state[key] = tensor
            elif key.startswith("model.language_model."):
                name = "model." + key[len("model.language_model.") :]
                if modified or not re.search(r"([qk]_layernorm|post_layernorm)\.", name):
                    state[name] = tensor
        return state

    # --- files -------------------------------------------------------------------------------------------------
    def write_phi(
        self, folder: Path, tokenizer, fused: bool, modified: bool, suffix: str, shards: int = 1
    ) -> Path:
        """A Phi folder whose stage-trained norm weights hold other (pretrained) values than the truth."""
        weights = {k: self.pretrained[k] if STAGE_NORMS.match(k) else v for k, v in self.weights.items()}
        state = self.phi_fused(weights, modified) if fused else self.phi_split(weights, modified)
        state = {key: tensor.half() for key, tensor in state.items()}
        folder.mkdir(parents=True)
        text = self.config.text_config
        phi = PhiConfig(
            vocab_size=text.vocab_size,
            hidden_size=text.hidden_size,
            intermediate_size=text.intermediate_size,
            num_hidden_layers=text.num_hidden_layers,
            num_attention_heads=text.num_attention_heads,
            rope_parameters=dict(text.rope_parameters),
            max_position_embeddings=text.max_position_embeddings,
            resid_pdrop=0.0,
            qk_layernorm=modified,
        ).to_dict()
        if fused:  # the 4.36 config.json layout: flat rope fields
            phi.pop("rope_parameters", None)
            phi.update(
                partial_rotary_factor=text.rope_parameters["partial_rotary_factor"], rope_theta=10000.0
            )
            phi["transformers_version"] = "4.35.2"
        (folder / "config.json").write_text(json.dumps(phi))
        tokenizer.save_pretrained(folder)
        write_weights(folder, state, suffix, shards)
        return folder

    def write_eva_vit(self, path: Path) -> Path:
        """LAVIS eva_vit_g.pth: EVA-CLIP-g blocks without prefix, one block more than BLIP-2 runs, float16."""
        depth = self.config.vision_config.num_hidden_layers
        state = {
            key[len("visual_encoder.") :]: tensor.half()
            for key, tensor in self.original_state().items()
            if key.startswith("visual_encoder.")
        }
        extra = {k: v for k, v in state.items() if k.startswith("blocks.0.")}
        state.update(
            {k.replace("blocks.0.", f"blocks.{depth}.", 1): torch.randn_like(v) for k, v in extra.items()}
        )
        torch.save(state, path)
        return path

    def write_blip2_lavis(self, path: Path, weights=None) -> Path:
        """LAVIS blip2_pretrained_flant5xxl.pth: {"model": Q-Former (with its text parts), queries, ln_vision, heads}."""
        original = self.original_state(weights)
        model = {
            k: v for k, v in original.items() if k.startswith(("Qformer.", "query_tokens", "ln_vision."))
        }
        q = self.config.qformer_config
        g = self.generator
        width = q.hidden_size
        model.update(
            {
                "Qformer.bert.embeddings.word_embeddings.weight": random_like((30523, width), g),
                "Qformer.bert.embeddings.position_embeddings.weight": random_like((512, width), g),
                "Qformer.cls.predictions.bias": random_like((30523,), g),
                "Qformer.cls.predictions.transform.dense.weight": random_like((width, width), g),
                "Qformer.cls.predictions.transform.LayerNorm.weight": random_like((width,), g),
                "Qformer.cls.predictions.decoder.weight": random_like((30523, width), g),
                "vision_proj.weight": random_like((256, width), g),
                "text_proj.weight": random_like((256, width), g),
                "itm_head.weight": random_like((2, width), g),
                "temp": torch.tensor(0.07),
                "t5_proj.weight": random_like((32, width), g),
            }
        )
        for layer in range(q.num_hidden_layers):
            base = f"Qformer.bert.encoder.layer.{layer}"
            model[f"{base}.intermediate.dense.weight"] = random_like((q.intermediate_size, width), g)
            model[f"{base}.output.dense.weight"] = random_like((width, q.intermediate_size), g)
            model[f"{base}.output.LayerNorm.weight"] = random_like((width,), g)
        torch.save({"model": model}, path)
        return path

    def write_blip2_folder(self, folder: Path, qformer_weights=None) -> Path:
        """A transformers BLIP-2 folder (sharded safetensors) whose language-model side must be left out."""
        qformer_weights = self.weights if qformer_weights is None else qformer_weights
        folder.mkdir(parents=True)
        state = {}
        for key in self.weights:
            source = (
                qformer_weights if key.startswith(("model.qformer.", "model.query_tokens")) else self.weights
            )
            if key.startswith(("model.vision_model.", "model.qformer.", "model.query_tokens")):
                state[key[len("model.") :]] = source[key]
        state["language_projection.weight"] = random_like(
            (32, self.config.qformer_config.hidden_size), self.generator
        )
        state["language_model.lm_head.weight"] = random_like((100, 32), self.generator)
        drop = ("model_type", "transformers_version", "architectures")
        Blip2Config(
            vision_config={k: v for k, v in self.config.vision_config.to_dict().items() if k not in drop},
            qformer_config={k: v for k, v in self.config.qformer_config.to_dict().items() if k not in drop},
            num_query_tokens=self.config.num_query_tokens,
        ).save_pretrained(folder)
        write_weights(folder, state, ".safetensors", shards=2)
        return folder

    def stage_model(self, stage: int, with_qformer=False) -> dict[str, torch.Tensor]:
        """What the trainer saved: trainable tensors only (mixed float16/float32) plus the position_ids buffer."""
        original = self.original_state(lora=stage >= 2)
        model = {
            k: v for k, v in original.items() if k.startswith(("llama_proj", "Qformer.bert.embeddings.pos"))
        }
        model.update({k: v for k, v in original.items() if re.search(r"lora_[AB]\.weight$", k)})
        if with_qformer:
            model.update({k: v for k, v in original.items() if k.startswith(("Qformer.", "query_tokens"))})
        for key, tensor in self.weights.items():
            if STAGE_NORMS.match(key):
                name = STAGE_PREFIX[min(stage, 2)] + key[len("model.language_model.") :]
                model[name] = tensor.half() if "layers.0." in key else tensor
        return model

    def write_stage(self, path: Path, stage: int, with_qformer=False, edit=None) -> Path:
        model = self.stage_model(stage, with_qformer)
        if edit:
            edit(model)
        optimizer = {
            "state": {
                0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros(4), "exp_avg_sq": torch.zeros(4)}
            },
            "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "weight_decay": 0.05, "params": [0]}],
        }
        scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000}
        config = {
            "model": {"arch": "minigpt4", "lora_r": LORA_R, "lora_alpha": LORA_ALPHA},
            "run": {"seed": 42},
        }
        torch.save(
            {"model": model, "optimizer": optimizer, "scaler": scaler, "config": config, "epoch": 3}, path
        )
        return path


ORIGINAL_VISION_NAMES = [
    (r"^model\.vision_model\.embeddings\.patch_embedding\.", "visual_encoder.patch_embed.proj."),
    (r"^model\.vision_model\.embeddings\.class_embedding$", "visual_encoder.cls_token"),
    (r"^model\.vision_model\.embeddings\.position_embedding$", "visual_encoder.pos_embed"),
    (r"^model\.vision_model\.encoder\.layers\.(\d+)\.layer_norm(\d)\.", r"visual_encoder.blocks.\1.norm\2."),
    (
        r"^model\.vision_model\.encoder\.layers\.(\d+)\.self_attn\.qkv\.",
        r"visual_encoder.blocks.\1.attn.qkv.",
    ),
    (
        r"^model\.vision_model\.encoder\.layers\.(\d+)\.self_attn\.projection\.",
        r"visual_encoder.blocks.\1.attn.proj.",
    ),
    (r"^model\.vision_model\.encoder\.layers\.(\d+)\.mlp\.", r"visual_encoder.blocks.\1.mlp."),
    (r"^model\.vision_model\.post_layernorm\.", "ln_vision."),
    (r"^model\.qformer\.layernorm\.", "Qformer.bert.embeddings.LayerNorm."),
    (
        r"^model\.qformer\.encoder\.layer\.(\d+)\.(\w+)\.attention\.",
        r"Qformer.bert.encoder.layer.\1.\2.self.",
    ),
    (r"^model\.qformer\.encoder\.layer\.", "Qformer.bert.encoder.layer."),
    (r"^model\.query_tokens$", "query_tokens"),
    (r"^model\.multi_modal_projector\.linear_1\.", "llama_proj."),
    (r"^model\.multi_modal_projector\.linear_2\.", "llama_proj2."),
]


def write_weights(folder: Path, state: dict[str, torch.Tensor], suffix: str, shards: int):
    """`model.safetensors`/`pytorch_model.bin`, or that many shards with the transformers index json."""
    stem = "model" if suffix == ".safetensors" else "pytorch_model"
    keys = sorted(state)
    groups = [keys[i::shards] for i in range(shards)]
    names = (
        [f"{stem}{suffix}"]
        if shards == 1
        else [f"{stem}-{i + 1:05d}-of-{shards:05d}{suffix}" for i in range(shards)]
    )
    for name, group in zip(names, groups, strict=True):
        part = {key: state[key].contiguous() for key in group}
        if suffix == ".safetensors":
            save_file(part, folder / name, metadata={"format": "pt"})
        else:
            torch.save(part, folder / name)
    if shards > 1:
        index = {
            "metadata": {},
            "weight_map": {key: name for name, group in zip(names, groups, strict=True) for key in group},
        }
        (folder / f"{stem}{suffix}.index.json").write_text(json.dumps(index))
