"""`tinygptv chat`: talk to a checkpoint in the terminal, with streamed answers and grounding boxes saved."""

from ..chat.generation import GenerationSettings


def add_model_arguments(parser):
    """The checkpoint and how to load it; shared with `tinygptv serve`."""
    parser.add_argument("model", help="checkpoint folder or Hub id")
    weights = parser.add_mutually_exclusive_group()
    choices = [
        ("--int8", "int8", "int8 weights for fast CPU inference (the default on a CPU)"),
        ("--int4", "int4", "int4 weights for CPU inference in half int8's memory (more drift)"),
        (
            "--full-weights",
            "none",
            "unquantized weights: float32 on a CPU, the checkpoint's dtype on a GPU (its default)",
        ),
        ("--load-in-8bit", "8bit", "8bit weights (bitsandbytes)"),
        ("--load-in-4bit", "4bit", "4bit weights (bitsandbytes)"),
    ]
    for flag, value, help in choices:
        weights.add_argument(flag, dest="quantization", action="store_const", const=value, help=help)


def add_parser(subparsers):
    parser = subparsers.add_parser("chat", help="talk to a checkpoint in the terminal")
    add_model_arguments(parser)
    parser.add_argument("--image", help="picture to talk about (change it later with /image PATH)")
    sampling = "(default: %(default)s, as the original's chat)"
    defaults = GenerationSettings()
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help=sampling)
    parser.add_argument("--top-p", type=float, default=defaults.top_p, help=sampling)
    parser.add_argument(
        "--repetition-penalty", type=float, default=defaults.repetition_penalty, help=sampling
    )
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens, help=sampling)
    parser.add_argument("--greedy", action="store_true", help="deterministic answers instead of sampling")
    parser.add_argument("--save-dir", help="folder for annotated images (default: a new temporary folder)")
    parser.set_defaults(run=run)


def run(args):
    from ..chat import ChatSession, ModelStream, load_chat_model
    from ..chat.terminal import TerminalChat
    from ..processors import load_image

    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        greedy=args.greedy,
    )
    image = load_image(args.image) if args.image else None  # a bad path fails before the slow model load
    stream = ModelStream(*load_chat_model(args.model, args.quantization))
    session = ChatSession(stream, settings, stream.end_symbol, image=image)
    TerminalChat(session, args.save_dir).run()
