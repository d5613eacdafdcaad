"""`python -m tinygptv_hf.cli` under accelerate's FSDP on a CPU, for the FSDP tests (launched by `accelerate launch`
in place of `-m tinygptv_hf.cli`; every other argument is the documented command's).

accelerate 1.16 runs FSDP only on accelerator devices: with several CPU processes its `AcceleratorState` stays
`MULTI_CPU` (DDP) and drops the FSDP plugin the launcher configured. torch's FSDP2 (`fully_shard`) itself runs on CPU
over gloo, so this puts the plugin back: the one override the CPU needs, nothing else changes.

With `KILL_AT_CHECKPOINT=N` in the environment, the main process kills itself (SIGKILL) once checkpoint-N is
complete, and the launcher then ends the others: a run killed -9 right after a mid-run checkpoint.
"""

import os
import signal
import sys
import time

from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType
from transformers import TrainerCallback

from tinygptv_hf.cli import build_parser, main
from tinygptv_hf.commands.train import parse_variables
from tinygptv_hf.trainers.recipe import Recipe, run_recipe

_accelerator_state_init = AcceleratorState.__init__


def _fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _accelerator_state_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        if self._mixed_precision != "no":
            fsdp_plugin.set_mixed_precision(self._mixed_precision)
        self.fsdp_plugin = fsdp_plugin


class KillAfterCheckpoint(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            if args.process_index == 0:  # the completion mark is written: die as kill -9 would make it
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(300)  # the others wait for the launcher to end them


AcceleratorState.__init__ = _fsdp_on_cpu

if __name__ == "__main__":
    if "KILL_AT_CHECKPOINT" not in os.environ:
        sys.exit(main())
    args = build_parser().parse_args(sys.argv[1:])
    recipe = Recipe.load(args.recipe, parse_variables(args.set))
    run_recipe(recipe, trainer_callbacks=[KillAfterCheckpoint(int(os.environ["KILL_AT_CHECKPOINT"]))])
