"""`tinygptv push`: publish a checkpoint folder as branch `stage-N` of a Hub repository, tagged, with its card."""

from ..stages import TRAINING_STAGES


def add_parser(subparsers):
    parser = subparsers.add_parser("push", help="upload a checkpoint folder as one stage of a Hub repository")
    parser.add_argument(
        "checkpoint_dir", help="checkpoint folder to upload (written by init or a training stage)"
    )
    parser.add_argument("--repo", required=True, help="Hub repository, OWNER/NAME (created when missing)")
    parser.add_argument("--stage", required=True, type=int, choices=sorted(TRAINING_STAGES))
    parser.add_argument(
        "--force", action="store_true", help="replace a stage branch that holds different files"
    )
    parser.add_argument("--update-main", action="store_true", help="also make main point at this stage")
    parser.add_argument("--message", help="commit message")
    parser.set_defaults(run=run)


def run(args):
    from ..publishing import push_stage

    result = push_stage(
        args.checkpoint_dir,
        args.repo,
        args.stage,
        force=args.force,
        update_main=args.update_main,
        commit_message=args.message,
    )
    change = "new commit" if result["new_commit"] else "unchanged, no new commit"
    print(f"{result['repo_id']}@{result['branch']}: {result['commit']} ({change}), tag {result['tag']}")
    if result["main"]:
        print(f"{result['repo_id']}@main: {result['main']}")
