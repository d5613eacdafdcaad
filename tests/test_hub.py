"""Staged checkpoints on a real local HTTP Hub, driven by the real huggingface_hub client.

Pushes run in this process against the test Hub (huggingface_hub's endpoint patched) or through the `tinygptv push`
command in a subprocess with `HF_ENDPOINT`; loading back runs in a fresh process where tinygptv_hf is not importable.
"""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hub_server import HubServer
from huggingface_hub import HfApi, ModelCard, constants

from tinygptv_hf import TinyGPTVForConditionalGeneration
from tinygptv_hf.cards import render_model_card, stage_trainable_parameters
from tinygptv_hf.checkpoint import init_checkpoint
from tinygptv_hf.modeling.configuration_tinygptv import TRANSFORMERS_REQUIREMENT
from tinygptv_hf.presets import preset_config
from tinygptv_hf.publishing import PushError, push_stage
from tinygptv_hf.stages import STAGES

TOKEN = "hf_fake_do_not_print_1234"
REPO = "me/tinygptv"


@pytest.fixture(scope="module")
def server():
    with HubServer() as hub_server, pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "ENDPOINT", hub_server.url)
        yield hub_server


@pytest.fixture(scope="module")
def api(server):
    return HfApi(endpoint=server.url, token=TOKEN)


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """Two tiny checkpoints with different weights, standing in for the outputs of stages 1 and 2."""
    root = tmp_path_factory.mktemp("checkpoints")
    return [init_checkpoint("tiny", root / f"stage{stage}", seed=stage) for stage in (1, 2)]


@pytest.fixture
def checkpoints(originals, tmp_path):
    """Fresh copies per test: a push writes README.md into the folder it uploads."""
    return [Path(shutil.copytree(folder, tmp_path / folder.name)) for folder in originals]


def hub_env(server, tmp_path, **extra) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING"))}
    return env | {"HF_ENDPOINT": server.url, "HF_HOME": str(tmp_path / "hf_home"), **extra}


def tinygptv(*args, env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tinygptv_hf.cli", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def refs(api, repo_id) -> tuple[dict, dict]:
    found = api.list_repo_refs(repo_id)
    return {r.name: r.target_commit for r in found.branches}, {r.name: r.target_commit for r in found.tags}


def remote_files(server, repo_id, revision) -> dict[str, bytes]:
    return server.hub.repos[repo_id].resolve(revision).files


@pytest.fixture(scope="module")
def published(server, originals, tmp_path_factory):
    """Stage 1 through the CLI (env token, debug logging), stage 2 through `push_stage` as the training flow does."""
    work = tmp_path_factory.mktemp("published")
    stage1, stage2 = (Path(shutil.copytree(folder, work / folder.name)) for folder in originals)
    env = hub_env(server, work, HF_TOKEN=TOKEN, HF_HUB_VERBOSITY="debug")
    cli = tinygptv("push", stage1, "--repo", REPO, "--stage", 1, env=env)
    assert cli.returncode == 0, cli.stderr
    second = push_stage(stage2, REPO, 2, token=TOKEN)
    return {"cli": cli, "stage1": stage1, "stage2": stage2, "second": second}


def test_stages_are_branches_with_tags(published, server, api):
    branches, tags = refs(api, REPO)
    first = branches["stage-1"]
    assert published["cli"].stdout.strip() == f"{REPO}@stage-1: {first} (new commit), tag stage-1-{first[:8]}"
    assert branches["stage-2"] == published["second"]["commit"] and published["second"]["new_commit"]
    assert tags == {f"stage-1-{first[:8]}": first, f"stage-2-{branches['stage-2'][:8]}": branches["stage-2"]}
    # stage-2 branched from stage-1; main was not asked to move, so it still holds only the initial commit.
    assert server.hub.repos[REPO].commits[branches["stage-2"]].parent == first
    assert set(remote_files(server, REPO, "main")) == {".gitattributes"}
    for stage in (1, 2):
        local = {
            path.relative_to(published[f"stage{stage}"]).as_posix(): path.read_bytes()
            for path in published[f"stage{stage}"].rglob("*")
            if path.is_file()
        }
        assert {
            p: d for p, d in remote_files(server, REPO, f"stage-{stage}").items() if p != ".gitattributes"
        } == local
        assert {"model.safetensors", "modeling_tinygptv.py", "tokenizer.json", "README.md"} <= set(local)


def test_token_is_used_but_never_printed(published, server):
    assert TOKEN in server.hub.tokens
    assert TOKEN not in published["cli"].stdout + published["cli"].stderr


LOAD_IN_FRESH_PROCESS = """
import sys
sys.modules["tinygptv_hf"] = None  # the package is not installed here: everything comes from the Hub
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

out = {}
for revision in ("stage-1", "stage-2"):
    processor = AutoProcessor.from_pretrained("%(repo)s", revision=revision, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained("%(repo)s", revision=revision, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    image = Image.new("RGB", (64, 48), (200, 30, 90))
    inputs = processor(images=image, text="<ImageHere> a photo of", return_tensors="pt")
    with torch.no_grad():
        out[revision] = {"inputs": dict(inputs), "logits": model(**inputs).logits}
torch.save(out, sys.argv[1])
"""


def test_fresh_process_loads_each_stage_by_revision(published, server, tmp_path):
    env = hub_env(server, tmp_path)
    script = textwrap.dedent(LOAD_IN_FRESH_PROCESS % {"repo": REPO})
    result = subprocess.run(
        [sys.executable, "-c", script, tmp_path / "out.pt"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = torch.load(tmp_path / "out.pt")
    for stage in (1, 2):
        remote = loaded[f"stage-{stage}"]
        local = TinyGPTVForConditionalGeneration.from_pretrained(published[f"stage{stage}"]).eval()
        with torch.no_grad():
            expected = local(**remote["inputs"]).logits
        torch.testing.assert_close(remote["logits"], expected, rtol=0, atol=0)
    assert not torch.allclose(loaded["stage-1"]["logits"], loaded["stage-2"]["logits"])


def test_repush_of_identical_files_makes_no_commit(published, server, api):
    before = refs(api, REPO)
    commits = len(server.hub.repos[REPO].commits)
    again = push_stage(published["stage2"], REPO, 2, token=TOKEN)
    assert not again["new_commit"] and again["commit"] == before[0]["stage-2"]
    assert refs(api, REPO) == before and len(server.hub.repos[REPO].commits) == commits


def test_overwriting_a_stage_needs_force(server, api, checkpoints):
    first, other = checkpoints
    repo = "me/overwrite"
    pushed = push_stage(first, repo, 1, token=TOKEN)
    shutil.copy(first / "README.md", other / "README.md")
    with pytest.raises(PushError, match="force"):
        push_stage(other, repo, 1, token=TOKEN)
    assert refs(api, repo)[0]["stage-1"] == pushed["commit"]

    replaced = push_stage(other, repo, 1, token=TOKEN, force=True)
    branches, tags = refs(api, repo)
    assert branches["stage-1"] == replaced["commit"] != pushed["commit"]
    assert (
        remote_files(server, repo, "stage-1")["model.safetensors"]
        == (other / "model.safetensors").read_bytes()
    )
    # The replaced push stays reachable through its tag.
    assert tags[pushed["tag"]] == pushed["commit"] and tags[replaced["tag"]] == replaced["commit"]


def test_update_main_gives_main_the_stage_files(server, api, checkpoints):
    repo = "me/main"
    pushed = push_stage(checkpoints[0], repo, 1, token=TOKEN, update_main=True)
    assert remote_files(server, repo, "main") == remote_files(server, repo, "stage-1")
    again = push_stage(checkpoints[0], repo, 1, token=TOKEN, update_main=True)
    assert again["main"] == pushed["main"] and not again["new_commit"]


def test_network_failure_mid_push_leaves_branch_unchanged_and_retry_completes(server, api, checkpoints):
    first, second = checkpoints
    repo = "me/flaky"
    push_stage(first, repo, 1, token=TOKEN)
    before, commits = refs(api, repo), len(server.hub.repos[repo].commits)

    server.drop_next_commits(1)
    with pytest.raises(Exception, match="disconnected"):
        push_stage(second, repo, 2, token=TOKEN)
    branches, tags = refs(api, repo)
    # The new branch exists (created before the commit) but still points at stage 1: no partial upload landed.
    assert branches["stage-2"] == before[0]["stage-1"] and tags == before[1]
    assert len(server.hub.repos[repo].commits) == commits

    retried = push_stage(second, repo, 2, token=TOKEN)
    assert retried["new_commit"] and refs(api, repo)[0]["stage-2"] == retried["commit"]
    assert (
        remote_files(server, repo, "stage-2")["model.safetensors"]
        == (second / "model.safetensors").read_bytes()
    )

    server.drop_next_commits(1)
    with pytest.raises(Exception, match="disconnected"):
        push_stage(first, repo, 2, token=TOKEN, force=True)
    assert refs(api, repo)[0]["stage-2"] == retried["commit"]
    assert push_stage(first, repo, 2, token=TOKEN, force=True)["new_commit"]


def test_push_without_token_is_a_clear_error(server, checkpoints, tmp_path):
    result = tinygptv(
        "push", checkpoints[0], "--repo", "me/no-token", "--stage", 1, env=hub_env(server, tmp_path)
    )
    assert result.returncode == 2
    assert "No Hugging Face token found" in result.stderr and "Traceback" not in result.stderr
    assert "me/no-token" not in server.hub.repos


def test_pushed_card_metadata(published, server):
    card = ModelCard(remote_files(server, REPO, "stage-2")["README.md"].decode())
    first = refs(HfApi(endpoint=server.url), REPO)[0]["stage-1"]
    assert card.data.license == "bsd-3-clause"
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-text-to-text"
    assert card.data.base_model == ["microsoft/phi-2", "Salesforce/blip2-flan-t5-xxl"]
    assert card.data.previous_stage == f"{REPO}@{first}" and card.data.stage == 2
    assert {"tinygptv", "stage-2"} <= set(card.data.tags)
    assert 'revision = "me/tinygptv", "stage-2"' in card.text and "trust_remote_code=True" in card.text
    assert "load_in_8bit=True" in card.text and "load_in_4bit=True" in card.text
    model = TinyGPTVForConditionalGeneration.from_pretrained(published["stage2"])
    assert f"**{sum(p.numel() for p in model.parameters()):,}**" in card.text


def test_rendered_card_carries_recipe_results_and_sources(originals, tmp_path):
    recipe = {
        "learning_rate": 1e-4,
        "optimizer": {"name": "adamw"},
        "datasets": {"org/captions": 0.9, "cc_sbu": 0.1},
    }
    results = [{"task": "visual-question-answering", "dataset": "gqa", "metric": "accuracy", "value": 33.6}]
    sources = [{"path": "TinyGPT-V_for_Stage3.pth", "sha256": "ab" * 32}]
    card = render_model_card(
        originals[0],
        stage=3,
        repo_id="me/other",
        recipe=recipe,
        eval_results=results,
        previous_stage_ref="someone/stage2@0123abcd",
        source_files=sources,
    )
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    metadata = loaded.data.to_dict()
    assert metadata["datasets"] == ["org/captions"]
    assert metadata["base_model"][-1] == "someone/stage2"
    assert metadata["model-index"][0]["results"][0]["metrics"] == [{"type": "accuracy", "value": 33.6}]
    assert loaded.data.eval_results[0].dataset_type == "gqa"
    assert "| `optimizer.name` | adamw |" in loaded.text and "| cc_sbu | 0.1 |" in loaded.text
    assert f"| `TinyGPT-V_for_Stage3.pth` | `{'ab' * 32}` |" in loaded.text
    written_with = TinyGPTVForConditionalGeneration.config_class.from_pretrained(
        originals[0]
    ).transformers_version
    assert (
        f"runs on `{TRANSFORMERS_REQUIREMENT}` (these files were written\nwith transformers {written_with})"
        in (loaded.text)
    )


def _full_size_skeleton():
    with torch.device("meta"):
        return TinyGPTVForConditionalGeneration(preset_config("phi2"))


def test_trainable_counts_match_the_original_at_full_size():
    # Stage 1 trains 13,809,664 parameters, the projector and LLM norm weights
    # (docs/original-differences.md#stages).
    assert sum(stage_trainable_parameters(_full_size_skeleton(), STAGES[1]).values()) == 13_809_664
    # Stages 2-4 add r=64 LoRA on separate q/k/v/dense of 32 layers: 32 * 4 * 64 * (2560 + 2560).
    assert (
        sum(stage_trainable_parameters(_full_size_skeleton(), STAGES[2]).values()) == 13_809_664 + 41_943_040
    )
