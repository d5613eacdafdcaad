"""A saved folder is self-contained: it loads through the Auto classes where the package is not installed, and the
installed package serves it natively (its classes win over the copied code, even with trust_remote_code=True)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
    pipeline,
)

QUESTION = "What is in the picture?"

REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys

    sys.modules["tinygptv_hf"] = None  # the package must not be importable: everything comes from the folder

    import json

    import torch
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForImageTextToText,
        AutoProcessor,
        GenerationConfig,
        pipeline,
    )
    from transformers.testing_utils import CaptureLogger
    from transformers.utils import logging

    folder, image_path, question, out_path = sys.argv[1:5]
    try:
        import tinygptv_hf  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("tinygptv_hf is importable")

    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    backbone = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": "image", "path": image_path}, {"type": "text", "text": question}]}]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        logits = model(**inputs).logits
        hidden = backbone(**inputs).last_hidden_state
    pipe = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
    answer = pipe(text=messages, max_new_tokens=4)[0]["generated_text"][-1]["content"]
    # A caller's GenerationConfig keeps the folder's stop strings, for which the folder's tokenizer is loaded.
    logging.set_verbosity_warning()
    with CaptureLogger(logging.get_logger("transformers")) as generate_log:
        model.generate(**inputs, generation_config=GenerationConfig(max_new_tokens=2, do_sample=False))
    torch.save({"logits": logits, "hidden": hidden, "input_ids": inputs["input_ids"]}, out_path + ".pt")
    classes = [config, backbone, model, processor, processor.image_processor, pipe.model]
    names = [f"{type(obj).__module__}.{type(obj).__name__}" for obj in classes]
    with open(out_path + ".json", "w") as handle:
        json.dump({"classes": names, "answer": answer, "generate_log": generate_log.out}, handle)
    """
)


def run_without_package(tmp_path, *args):
    script = tmp_path / "load_remote.py"
    script.write_text(REMOTE_SCRIPT)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    result = subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]


def test_folder_carries_code_and_full_auto_map(tiny_checkpoint):
    files = {path.name for path in tiny_checkpoint.iterdir()}
    for name in (
        "configuration_tinygptv.py",
        "modeling_tinygptv.py",
        "modeling_tinygptv_phi.py",
        "image_processing_tinygptv.py",
        "processing_tinygptv.py",
    ):
        assert name in files
        assert "tinygptv_hf" not in (tiny_checkpoint / name).read_text()
    assert json.loads((tiny_checkpoint / "config.json").read_text())["auto_map"] == {
        "AutoConfig": "configuration_tinygptv.TinyGPTVConfig",
        "AutoModel": "modeling_tinygptv.TinyGPTVModel",
        "AutoModelForImageTextToText": "modeling_tinygptv.TinyGPTVForConditionalGeneration",
    }
    for name in ("processor_config.json", "tokenizer_config.json"):
        auto_map = json.loads((tiny_checkpoint / name).read_text())["auto_map"]
        assert auto_map == {"AutoProcessor": "processing_tinygptv.TinyGPTVProcessor"}


def test_loads_without_the_package_and_matches(
    tiny_checkpoint, tiny_model, tiny_processor, image_files, tmp_path
):
    out = tmp_path / "remote"
    run_without_package(tmp_path, tiny_checkpoint, image_files[0], QUESTION, out)
    remote = torch.load(f"{out}.pt")
    report = json.loads(out.with_suffix(".json").read_text())
    for name in report["classes"]:
        assert name.startswith("transformers_modules."), name
    assert report["classes"][2].endswith("TinyGPTVForConditionalGeneration")
    assert report["classes"][1].endswith("TinyGPTVModel")
    assert "model of type" not in report["generate_log"], report["generate_log"]

    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "path": str(image_files[0])}, {"type": "text", "text": QUESTION}],
        }
    ]
    inputs = tiny_processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert torch.equal(inputs["input_ids"], remote["input_ids"])
    with torch.no_grad():
        logits = tiny_model(**inputs).logits
        hidden = tiny_model.model(**inputs).last_hidden_state
    torch.testing.assert_close(logits, remote["logits"], rtol=0, atol=1e-6)
    torch.testing.assert_close(hidden, remote["hidden"], rtol=0, atol=1e-6)

    pipe = pipeline("image-text-to-text", model=str(tiny_checkpoint))
    assert pipe(text=messages, max_new_tokens=4)[0]["generated_text"][-1]["content"] == report["answer"]


@pytest.mark.parametrize("trust_remote_code", [None, True])
def test_installed_package_wins_over_remote_code(tiny_checkpoint, trust_remote_code):
    kwargs = {} if trust_remote_code is None else {"trust_remote_code": trust_remote_code}
    loaded = {
        "TinyGPTVConfig": AutoConfig.from_pretrained(tiny_checkpoint, **kwargs),
        "TinyGPTVModel": AutoModel.from_pretrained(tiny_checkpoint, **kwargs),
        "TinyGPTVForConditionalGeneration": AutoModelForImageTextToText.from_pretrained(
            tiny_checkpoint, **kwargs
        ),
        "TinyGPTVProcessor": AutoProcessor.from_pretrained(tiny_checkpoint, **kwargs),
        "TinyGPTVImageProcessor": AutoImageProcessor.from_pretrained(tiny_checkpoint, **kwargs),
    }
    for name, obj in loaded.items():
        assert type(obj).__name__ == name
        assert type(obj).__module__.startswith("tinygptv_hf."), type(obj).__module__
