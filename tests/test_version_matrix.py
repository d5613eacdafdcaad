"""The remote code across transformers releases: a folder written by the package loads, generates and gives the
package's logits (1e-5) on the floor of the supported range, a release in the middle when one exists and the newest
release the registry serves, each in its own venv with only torch, transformers and peft (the package not
importable); outside the range, the first import raises the one-line ImportError of the configuration file.

The venvs are built by the test when missing, outside the repository (ruff and pytest would crawl them), under
`$TINYGPTV_VERSION_MATRIX_CACHE` or ~/.cache/tinygptv-version-matrix, and reused by later runs. Which releases the
matrix takes is read from the registry (`pip index versions`) and from the ranges of the configuration file and
setup.cfg, so a new release joins the matrix on the next cold run (docs/compatibility.md).
"""

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import peft
import pytest
import torch
import transformers
from peft import PeftModel
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from tinygptv_hf.modeling.configuration_tinygptv import (
    TRANSFORMERS_CEILING,
    TRANSFORMERS_FLOOR,
    TRANSFORMERS_REQUIREMENT,
    check_transformers_version,
)
from tinygptv_hf.stages import STAGES, prepare_model_for_stage

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(
    os.environ.get("TINYGPTV_VERSION_MATRIX_CACHE", Path.home() / ".cache" / "tinygptv-version-matrix")
)
QUESTION = "What is in the picture?"
ATOL = 1e-5

PROBE = textwrap.dedent(
    """
    import sys

    sys.modules["tinygptv_hf"] = None  # everything comes from the folder
    import importlib.metadata
    import json
    import os

    import torch
    from peft import PeftModel
    from PIL import Image
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor

    folder, adapter, image_path, question, out = sys.argv[1:6]
    remote = {"trust_remote_code": True}
    config = AutoConfig.from_pretrained(folder, **remote)
    processor = AutoProcessor.from_pretrained(folder, **remote)
    image_processor = AutoImageProcessor.from_pretrained(folder, **remote)
    model = AutoModelForImageTextToText.from_pretrained(folder, **remote).eval()
    int8 = AutoModelForImageTextToText.from_pretrained(folder, quantization_config={"quant_method": "tinygptv_cpu_int8"}, **remote).eval()
    lora = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(folder, **remote), adapter).eval()

    messages = [{"role": "user", "content": [{"type": "image", "path": image_path}, {"type": "text", "text": question}]}]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    templates = {
        name: processor.apply_chat_template(messages, chat_template=name, add_generation_prompt=True)
        for name in processor.chat_template
    }
    with torch.no_grad():
        results = {
            "input_ids": inputs["input_ids"],
            "pixel_values": image_processor(images=[Image.open(image_path)], return_tensors="pt")["pixel_values"],
            "logits": model(**inputs).logits,
            "int8_logits": int8(**inputs).logits,
            "lora_logits": lora(**inputs).logits,
            "generated": model.generate(**inputs, max_new_tokens=4, do_sample=False, stop_strings=None),
        }
    torch.save(results, out + ".pt")
    files = [getattr(module, "__file__", None) or "" for name, module in sys.modules.items()
             if name.startswith("transformers_modules.")]
    loaded = sorted({os.path.basename(file)[:-3] for file in files if file.endswith(".py")} - {"__init__"})
    objects = [config, processor, image_processor, model, int8, lora.base_model.model]
    report = {
        "versions": {name: importlib.metadata.version(name) for name in ("transformers", "torch", "peft")},
        "classes": [type(obj).__module__ + "." + type(obj).__name__ for obj in objects],
        "modules": loaded,
        "templates": templates,
    }
    with open(out + ".json", "w") as handle:
        json.dump(report, handle)
    """
)

OUTSIDE_PROBE = textwrap.dedent(
    """
    import json
    import sys

    sys.modules["tinygptv_hf"] = None
    import transformers

    folder, out = sys.argv[1:3]
    calls = {
        "AutoConfig": lambda: transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True),
        "AutoModelForImageTextToText": lambda: transformers.AutoModelForImageTextToText.from_pretrained(
            folder, trust_remote_code=True
        ),
        "pipeline": lambda: transformers.pipeline("image-text-to-text", model=folder, trust_remote_code=True),
    }
    if not transformers.__version__.startswith("4."):  # 4.x's AutoProcessor fails on the file format first
        calls["AutoProcessor"] = lambda: transformers.AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    errors = {}
    for name, call in calls.items():
        try:
            call()
        except Exception as error:
            errors[name] = [type(error).__name__, str(error)]
        else:
            errors[name] = None
    with open(out, "w") as handle:
        json.dump({"version": transformers.__version__, "errors": errors}, handle)
    """
)


def release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def setup_cfg_range(name: str) -> tuple[str, str]:
    """(floor, ceiling) of `name` in setup.cfg's install_requires, as `name>=floor,<ceiling` states them."""
    parser = configparser.ConfigParser()
    parser.read(REPO_ROOT / "setup.cfg")
    for line in parser["options"]["install_requires"].split("\n"):
        match = re.fullmatch(rf"{name}>=([\d.]+),<([\d.]+)", line.strip())
        if match:
            return match.group(1), match.group(2)
    raise AssertionError(f"setup.cfg states no {name}>=floor,<ceiling range")


def published(name: str) -> list[str]:
    """The final releases of `name` the registry serves, oldest first (pre-releases are not offered to users)."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", name],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    listed = re.search(r"Available versions: (.*)", result.stdout).group(1).split(", ")
    return sorted((v for v in listed if re.fullmatch(r"\d+(\.\d+)*", v)), key=release)


def built_venv(venv: Path, requirements: list[str], torch_venv: Path | None = None) -> Path:
    """`venv` with `requirements`, built once (in a scratch folder renamed when complete, so an interrupted build is
    never reused). With `torch_venv`, a .pth file puts that venv's torch on the path, so pip takes it as installed."""
    python = venv / "bin" / "python"
    if python.exists():
        return venv
    scratch = venv.with_name(venv.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(scratch)], check=True)
    if torch_venv is not None:
        (site_packages(scratch) / "matrix_torch.pth").write_text(f"{site_packages(torch_venv)}\n")
    command = [str(scratch / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile", *requirements]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"pip install {requirements} failed:\n{result.stderr[-3000:]}"
    scratch.rename(venv)
    return venv


def site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def matrix_venv(requirements: list[str]) -> Path:
    """A venv with `requirements` and pillow on the CPU torch this suite runs on. Torch (the bulk of a venv: ~1 GB
    and the longest install) lives once in its own venv, which every matrix venv shares."""
    torch_requirement = f"torch=={torch.__version__.split('+')[0]}"
    torch_venv = built_venv(CACHE / torch_requirement.replace("==", "-"), [torch_requirement])
    name = "-".join(sorted(r.replace("==", "-") for r in requirements))
    return built_venv(CACHE / name, [*requirements, "pillow"], torch_venv)


def run_in(venv: Path, script: str, *args, tmp_path: Path) -> None:
    path = tmp_path / "probe.py"
    path.write_text(script)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    result = subprocess.run(
        [str(venv / "bin" / "python"), str(path), *map(str, args)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope="module")
def releases():
    """The matrix: transformers' floor, a middle and the newest release in range, paired with peft's floor, middle
    and newest in setup.cfg's range (so one venv per row covers both); and the newest releases below the floor and
    of 4.x, which must fail with the one line."""
    transformers_all = published("transformers")
    inside = [v for v in transformers_all if TRANSFORMERS_FLOOR <= release(v) < TRANSFORMERS_CEILING]
    peft_floor, peft_ceiling = setup_cfg_range("peft")
    peft_all = [v for v in published("peft") if release(peft_floor) <= release(v) < release(peft_ceiling)]
    assert inside and peft_all, (inside, peft_all)

    def floor_middle_newest(versions):
        return [versions[0], versions[len(versions) // 2], versions[-1]]

    rows = sorted(set(zip(floor_middle_newest(inside), floor_middle_newest(peft_all), strict=True)))
    below = [v for v in transformers_all if release(v) < TRANSFORMERS_FLOOR]
    outside = sorted({below[-1], [v for v in below if v.startswith("4.")][-1]}, key=release)
    return {"inside": rows, "outside": outside}


@pytest.fixture(scope="module")
def lora_adapter(tiny_checkpoint, tmp_path_factory):
    """A LoRA adapter folder as the training stages write it (stage 3's LoRA, non-zero so it changes the logits)."""
    folder = tmp_path_factory.mktemp("lora_adapter")
    model = prepare_model_for_stage(AutoModelForImageTextToText.from_pretrained(tiny_checkpoint), STAGES[3])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) / 10)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def expected(tiny_checkpoint, lora_adapter, image_files):
    """What the installed package computes on the same folder, adapter and prompt."""
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "path": str(image_files[0])}, {"type": "text", "text": QUESTION}],
        }
    ]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint).eval()
    int8 = AutoModelForImageTextToText.from_pretrained(
        tiny_checkpoint, quantization_config={"quant_method": "tinygptv_cpu_int8"}
    ).eval()
    lora = PeftModel.from_pretrained(
        AutoModelForImageTextToText.from_pretrained(tiny_checkpoint), lora_adapter
    )
    with torch.no_grad():
        return {
            "input_ids": inputs["input_ids"],
            "pixel_values": processor.image_processor(
                images=[Image.open(image_files[0])], return_tensors="pt"
            )["pixel_values"],
            "logits": model(**inputs).logits,
            "int8_logits": int8(**inputs).logits,
            "lora_logits": lora.eval()(**inputs).logits,
            "generated": model.generate(**inputs, max_new_tokens=4, do_sample=False, stop_strings=None),
            "templates": {
                name: processor.apply_chat_template(messages, chat_template=name, add_generation_prompt=True)
                for name in processor.chat_template
            },
        }


@pytest.mark.slow
def test_remote_code_matches_the_package_on_every_release_of_the_matrix(
    releases, tiny_checkpoint, lora_adapter, image_files, expected, tmp_path
):
    shipped = sorted(path.stem for path in tiny_checkpoint.glob("*.py"))
    for transformers_version, peft_version in releases["inside"]:
        venv = matrix_venv([f"transformers=={transformers_version}", f"peft=={peft_version}"])
        out = tmp_path / f"{transformers_version}-{peft_version}"
        out.mkdir()
        run_in(venv, PROBE, tiny_checkpoint, lora_adapter, image_files[0], QUESTION, out / "r", tmp_path=out)
        report = json.loads((out / "r.json").read_text())
        remote = torch.load(out / "r.pt")
        assert report["versions"]["transformers"] == transformers_version
        assert report["versions"]["peft"] == peft_version
        assert all(name.startswith("transformers_modules.") for name in report["classes"]), report["classes"]
        assert report["modules"] == shipped, "every code file of the folder was imported"
        assert report["templates"] == expected["templates"]
        for key in ("input_ids", "pixel_values", "generated"):
            assert torch.equal(remote[key], expected[key]), (transformers_version, key)
        for key in ("logits", "int8_logits", "lora_logits"):
            torch.testing.assert_close(
                remote[key], expected[key], rtol=0, atol=ATOL, msg=transformers_version
            )


@pytest.mark.slow
def test_remote_code_outside_the_range_raises_one_line(releases, tiny_checkpoint, tmp_path):
    for version in releases["outside"]:
        venv = matrix_venv([f"transformers=={version}"])
        out = tmp_path / version
        out.mkdir()
        run_in(venv, OUTSIDE_PROBE, tiny_checkpoint, out / "errors.json", tmp_path=out)
        report = json.loads((out / "errors.json").read_text())
        assert report["version"] == version
        message = (
            f"TinyGPT-V's model code needs {TRANSFORMERS_REQUIREMENT}, but transformers {version} is installed; "
            f'run: pip install "{TRANSFORMERS_REQUIREMENT}"'
        )
        assert len(report["errors"]) >= 3
        for call, error in report["errors"].items():
            assert error == ["ImportError", message], (version, call, error)


@pytest.mark.parametrize(
    "installed, supported",
    [
        ("5.24.0", True),
        ("5.24.0.dev0", True),
        ("5.99.3", True),
        ("5.23.9", False),
        ("4.57.6", False),
        ("6.0.0rc1", False),
        ("6.1.0", False),
    ],
)
def test_version_guard(installed, supported):
    if supported:
        check_transformers_version(installed)
    else:
        with pytest.raises(ImportError) as raised:
            check_transformers_version(installed)
        assert str(raised.value) == (
            f"TinyGPT-V's model code needs {TRANSFORMERS_REQUIREMENT}, but transformers {installed} is installed; "
            f'run: pip install "{TRANSFORMERS_REQUIREMENT}"'
        )


def test_setup_cfg_states_the_remote_code_range():
    floor, ceiling = setup_cfg_range("transformers")
    assert f"transformers>={floor},<{ceiling}" == TRANSFORMERS_REQUIREMENT


def test_written_folders_record_their_versions(tiny_checkpoint, lora_adapter):
    for name in ("config.json", "generation_config.json"):
        assert (
            json.loads((tiny_checkpoint / name).read_text())["transformers_version"]
            == transformers.__version__
        )
    assert json.loads((lora_adapter / "adapter_config.json").read_text())["peft_version"] == peft.__version__
