"""`tinygptv init`: a complete stage-0 checkpoint folder, random or assembled from pretrained Phi and BLIP-2."""

from ..presets import PRESETS


def add_parser(subparsers):
    parser = subparsers.add_parser("init", help="write a stage-0 checkpoint folder")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--output", required=True, help="folder to write")
    parser.add_argument("--llm", help="Phi folder in transformers format (pretrained language model)")
    parser.add_argument("--vision", help="BLIP-2 folder in transformers format (ViT, ln_vision, Q-Former)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=run)


def run(args):
    from ..checkpoint import init_checkpoint

    folder = init_checkpoint(
        args.preset, args.output, llm_path=args.llm, vision_path=args.vision, seed=args.seed
    )
    print(f"wrote {args.preset} stage-0 checkpoint to {folder}")
