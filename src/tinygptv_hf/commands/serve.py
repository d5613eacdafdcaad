"""`tinygptv serve`: the web demo (Gradio), or with `--api` an OpenAI-compatible HTTP server; both need the `serve`
extra and listen on localhost unless told otherwise."""

from .chat import add_model_arguments


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "serve",
        help="web demo with task shortcuts and grounding boxes (Gradio), or an OpenAI-compatible API (--api)",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 exposes the server"
    )
    parser.add_argument("--port", type=int, help="port (default: 7860 for the web demo, 8000 for --api)")
    api = parser.add_argument_group("OpenAI-compatible API")
    api.add_argument(
        "--api", action="store_true", help="serve /v1/chat/completions and /v1/models instead of the web demo"
    )
    api.add_argument("--served-model-name", help="the model's name in requests (default: the folder's name)")
    api.add_argument(
        "--max-batch",
        type=int,
        default=8,
        help="most requests answered by one batched generation (default: 8)",
    )
    api.add_argument(
        "--allow-image-urls",
        action="store_true",
        help="fetch http(s) image URLs given in requests (by default only data URLs are accepted)",
    )
    parser.set_defaults(run=run)


def run(args):
    if args.api:
        from ..chat.api import serve_api

        serve_api(
            args.model,
            args.host,
            args.port or 8000,
            args.quantization,
            args.served_model_name,
            args.max_batch,
            args.allow_image_urls,
        )
        return
    from ..chat.web import serve

    serve(args.model, args.host, args.port or 7860, args.quantization)
