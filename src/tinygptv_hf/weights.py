"""Reading weight files safely, and the name maps from transformers-format Phi and BLIP-2 to this model.

Pickles are opened with `torch.load(weights_only=True)`: a file that needs code execution is refused, never run.
"""

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class WeightsError(ValueError):
    """A weight file that cannot be read, or tensors that do not fit the model. The message names the key."""


def file_digest(path, algorithm: str = "sha256", header: bytes = b"") -> str:
    """Hex digest of `header` + the file's bytes, read in blocks (weight files are large)."""
    digest = hashlib.new(algorithm, header)
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_pickle(path) -> dict:
    """`torch.load` that refuses anything but tensors and plain containers."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (
        Exception
    ) as error:  # torch raises UnpicklingError, RuntimeError or others for unsafe/corrupt files
        raise WeightsError(
            f"Refusing to load {path}: it is not a plain tensor pickle that loads with weights_only=True "
            f"(it would need code execution, or it is corrupt). Details: {type(error).__name__}: {error}"
        ) from error


def weight_files(path) -> list[Path]:
    """The files `read_state_dict` reads for `path`: the file itself, or a folder's single file or its shards."""
    path = Path(path)
    if not path.is_dir():
        if not path.exists():
            raise WeightsError(f"Weight file not found: {path}")
        return [path]
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.exists():
            return [
                path / shard for shard in sorted(set(json.loads(index.read_text())["weight_map"].values()))
            ]
    for name in WEIGHT_FILES:
        if (path / name).exists():
            return [path / name]
    raise WeightsError(f"No weights in {path}: expected one of {WEIGHT_FILES} or a sharded index.")


def read_state_dict(path, select=None) -> dict[str, torch.Tensor]:
    """Tensors from a `.safetensors`/`.bin`/`.pth` file, or from a folder (sharded or not).

    `select(key) -> bool` keeps only some tensors; safetensors files then read nothing else (a BLIP-2 folder's
    vision side without its 11B-parameter language model).
    """
    state = {}
    for file in weight_files(path):
        if file.suffix == ".safetensors":
            try:
                with safe_open(os.fspath(file), "pt") as handle:
                    keys = [key for key in handle.keys() if select is None or select(key)]
                    state.update({key: handle.get_tensor(key) for key in keys})
            except Exception as error:
                raise WeightsError(f"Cannot read {file}: {error}") from error
            continue
        loaded = load_pickle(file)
        if not isinstance(loaded, dict):
            raise WeightsError(f"{file} holds a {type(loaded).__name__}, not a state dict.")
        state.update({key: value for key, value in loaded.items() if select is None or select(key)})
    return state


def split_fused_qkv(tensor: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split transformers-4.36 Phi's fused `query_key_value` rows, laid out per head as [q(d), k(d), v(d)]."""
    rows = tensor.shape[0]
    head_dim = rows // (3 * num_heads)
    grouped = tensor.reshape(num_heads, 3, head_dim, *tensor.shape[1:])
    return tuple(grouped[:, part].reshape(num_heads * head_dim, *tensor.shape[1:]) for part in range(3))


def phi_to_tinygptv(state: dict[str, torch.Tensor], num_heads: int) -> dict[str, torch.Tensor]:
    """Phi weights in either transformers format (fused 4.36 or separate q/k/v) renamed for this model."""
    converted = {}
    for key, tensor in state.items():
        if key.startswith("lm_head."):
            converted[key] = tensor
            continue
        if not key.startswith("model."):
            raise WeightsError(f"Unexpected Phi weight {key!r}: expected 'model.*' or 'lm_head.*'.")
        target = "model.language_model." + key[len("model.") :]
        if ".self_attn.query_key_value." in target:
            for name, part in zip(
                ("q_proj", "k_proj", "v_proj"), split_fused_qkv(tensor, num_heads), strict=True
            ):
                converted[target.replace("query_key_value", name)] = part
        else:
            converted[target] = tensor
    return converted


def phi_text_config(config: dict) -> dict:
    """Our text-config fields from a transformers Phi `config.json` (4.36 or current layout)."""
    rope = config.get("rope_parameters") or {}
    return dict(
        vocab_size=config["vocab_size"],
        hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"],
        num_hidden_layers=config["num_hidden_layers"],
        num_attention_heads=config["num_attention_heads"],
        partial_rotary_factor=rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 0.5)),
        rope_theta=rope.get("rope_theta", config.get("rope_theta", 10000.0)),
        max_position_embeddings=config.get("max_position_embeddings", 2048),
        layer_norm_eps=config.get("layer_norm_eps", 1e-5),
        hidden_act=config.get("hidden_act", "gelu_new"),
        resid_pdrop=config.get("resid_pdrop", 0.0),
        embd_pdrop=config.get("embd_pdrop", 0.0),
    )


def load_phi_language_model(path) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.exists():
        raise WeightsError(f"{path} is not a transformers Phi folder: config.json is missing.")
    text_config = phi_text_config(json.loads(config_file.read_text()))
    return phi_to_tinygptv(read_state_dict(path), text_config["num_attention_heads"]), text_config


def is_blip2_vision_side(key: str) -> bool:
    name = key[len("model.") :] if key.startswith("model.") else key
    return name.startswith(("vision_model.", "qformer.")) or name == "query_tokens"


def blip2_to_tinygptv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The vision tower, Q-Former and query tokens of a transformers BLIP-2 checkpoint; its LLM side is dropped."""
    converted = {}
    for key, tensor in state.items():
        if is_blip2_vision_side(key):
            converted["model." + (key[len("model.") :] if key.startswith("model.") else key)] = tensor
    if "model.query_tokens" not in converted:
        raise WeightsError("The BLIP-2 weights have no query_tokens: is this a BLIP-2 checkpoint?")
    return converted


def load_blip2_config(path) -> tuple[dict, dict, dict]:
    """A transformers BLIP-2 folder's config, with its vision and Q-Former parts as plain sub-config dicts."""
    config_file = Path(path) / "config.json"
    if not config_file.exists():
        raise WeightsError(f"{path} is not a transformers BLIP-2 folder: config.json is missing.")
    config = json.loads(config_file.read_text())
    vision_config = dict(config.get("vision_config") or {})
    qformer_config = dict(config.get("qformer_config") or {})
    for sub in (vision_config, qformer_config):
        for field in ("model_type", "transformers_version", "architectures", "_name_or_path"):
            sub.pop(field, None)
    return config, vision_config, qformer_config


def load_blip2_vision_side(path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    _, vision_config, qformer_config = load_blip2_config(path)
    state = read_state_dict(path, select=is_blip2_vision_side)
    return blip2_to_tinygptv(state), vision_config, qformer_config
