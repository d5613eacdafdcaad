"""`tinygptv train`, stopped (SIGSTOP) right after it has completed the checkpoint of one step, so that a test can
kill -9 a real training process at exactly that point: ``python stop_at_checkpoint.py STEP train RECIPE ...``."""

import os
import signal
import sys

from transformers import TrainerCallback

from tinygptv_hf.cli import build_parser
from tinygptv_hf.commands.train import parse_variables
from tinygptv_hf.trainers.recipe import Recipe, run_recipe


class StopAfterCheckpoint(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGSTOP)


if __name__ == "__main__":
    step, *arguments = sys.argv[1:]
    args = build_parser().parse_args(arguments)
    recipe = Recipe.load(args.recipe, parse_variables(args.set))
    run_recipe(recipe, resume=args.resume, trainer_callbacks=[StopAfterCheckpoint(int(step))])
