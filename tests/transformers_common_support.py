"""transformers' own common test mixins, taken from the source distribution of the installed transformers version.

The sdist ships `tests/test_{modeling,configuration,processing,image_processing}_common.py` but not the modules they
import from elsewhere in the transformers repository. The sdist is downloaded once per machine and version into
`~/.cache/tinygptv-hf/transformers-tests/<version>/` (never into this repository), the four files are unpacked as the
package `transformers_common_tests`, and each missing module gets a stand-in that only supplies the imported name:

* `generation/test_utils.py`: `GenerationTesterMixin`, empty. `ModelTesterMixin` checks that a tester of a model
  that can generate inherits it; the generation tests themselves are not in the sdist and do not run.
* `exporters/test_export.py`: `ExportTesterMixin`, empty (`ModelTesterMixin`'s base; its export tests do not run).
* `utils/test_configuration_utils.py`: `config_common_kwargs`, non-default values for `PreTrainedConfig`'s own fields.
* `utils/fetch_hub_objects_for_ci.py`: `url_to_local_path`, which answers the URL itself, as transformers' does for a
  file that CI did not fetch beforehand.
"""

import functools
import importlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import SimpleNamespace

import transformers
from filelock import FileLock

CACHE_ROOT = Path.home() / ".cache" / "tinygptv-hf" / "transformers-tests"
PACKAGE = "transformers_common_tests"
COMMON_MODULES = (
    "test_modeling_common",
    "test_configuration_common",
    "test_processing_common",
    "test_image_processing_common",
)

STAND_INS = {
    f"{PACKAGE}/__init__.py": "",
    f"{PACKAGE}/generation/__init__.py": "",
    f"{PACKAGE}/generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    f"{PACKAGE}/exporters/__init__.py": "",
    f"{PACKAGE}/exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    f"{PACKAGE}/utils/__init__.py": "",
    f"{PACKAGE}/utils/test_configuration_utils.py": (
        "config_common_kwargs = {\n"
        '    "return_dict": False,\n'
        '    "output_hidden_states": True,\n'
        '    "output_attentions": True,\n'
        '    "dtype": "float16",\n'
        '    "chunk_size_feed_forward": 5,\n'
        '    "architectures": ["BertModel"],\n'
        '    "id2label": {0: "label"},\n'
        '    "label2id": {"label": "0"},\n'
        '    "problem_type": "regression",\n'
        "}\n"
    ),
    "utils/fetch_hub_objects_for_ci.py": "def url_to_local_path(url):\n    return url\n",
}


def download_sdist(version: str, folder: Path) -> Path:
    """The transformers sdist of `version`, downloaded by pip into `folder`; a RuntimeError says why it failed."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--dest",
        str(folder),
    ]
    result = subprocess.run([*command, f"transformers=={version}"], capture_output=True, text=True)
    archives = sorted(folder.glob("transformers-*.tar.gz"))
    if result.returncode != 0 or not archives:
        raise RuntimeError(
            f"Could not download the transformers {version} source distribution, which holds the common tests "
            f"these tests run (`{' '.join(command)} transformers=={version}` exited with {result.returncode}):\n"
            f"{result.stderr.strip()[-2000:]}"
        )
    return archives[0]


def unpack(archive: Path, destination: Path) -> None:
    """The four common test files into `destination/PACKAGE`, with the stand-ins beside them."""
    with tarfile.open(archive) as tar:
        members = {
            Path(member.name).relative_to(Path(member.name).parts[0]).as_posix(): member for member in tar
        }
        for module in COMMON_MODULES:
            member = members.get(f"tests/{module}.py")
            if member is None:
                raise RuntimeError(
                    f"{archive.name} has no tests/{module}.py; this transformers version cannot be used."
                )
            target = destination / PACKAGE / f"{module}.py"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
    for relative, text in STAND_INS.items():
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


def prepare(version: str = transformers.__version__) -> Path:
    """The folder that holds `PACKAGE` for `version`, fetched and unpacked on first use (a lock keeps two pytest
    processes from doing it at once)."""
    folder = CACHE_ROOT / version
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with FileLock(str(CACHE_ROOT / f"{version}.lock")):
        if not (folder / PACKAGE / "__init__.py").exists():
            with tempfile.TemporaryDirectory(dir=CACHE_ROOT) as scratch:
                scratch = Path(scratch)
                archive = download_sdist(version, scratch / "download")
                unpack(archive, scratch / "unpacked")
                shutil.rmtree(folder, ignore_errors=True)
                (scratch / "unpacked").rename(folder)
    return folder


@functools.cache
def common_tests() -> SimpleNamespace:
    """The four common test modules of the installed transformers, by their names (once per process)."""
    folder = str(prepare())
    if folder not in sys.path:
        sys.path.append(folder)  # last, so that its `utils` folder shadows nothing
    return SimpleNamespace(
        **{module: importlib.import_module(f"{PACKAGE}.{module}") for module in COMMON_MODULES}
    )
