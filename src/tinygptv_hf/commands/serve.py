"""`tinygptv serve`: the web demo (needs the `serve` extra), on localhost unless told otherwise."""

from .chat import add_model_arguments


def add_parser(subparsers):
    parser = subparsers.add_parser("serve", help="web demo with task shortcuts and grounding boxes (Gradio)")
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 exposes the demo")
    parser.add_argument("--port", type=int, default=7860)
    parser.set_defaults(run=run)


def run(args):
    from ..chat.web import serve

    serve(args.model, args.host, args.port, args.quantization)
