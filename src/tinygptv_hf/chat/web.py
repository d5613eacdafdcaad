"""`tinygptv serve`: the web demo, a Gradio app over `ChatSession` with task shortcuts and drawn boxes.

Gradio is an optional extra, imported only when an app is built, so the core install stays light. Each request
rebuilds a `ChatSession` from the browser's own state (the picture's path and the finished turns): nothing about
one visitor lives in the server between requests.
"""

from importlib import resources
from pathlib import Path

from ..processors import ImageLoadError, load_image, to_rgb
from ..processors.templates import TASK_TOKENS
from .generation import GenerationSettings, ModelStream, load_chat_model
from .session import ChatSession, StreamFn

INSTALL_HINT = "the web demo needs Gradio: pip install 'tinygptv-hf[serve]'"
EXAMPLE_IMAGE = resources.files("tinygptv_hf") / "resources" / "example_shapes.png"
INTRO = (
    "# TinyGPT-V\nUpload a picture and ask about it. The task buttons put a stage-4 task token in front of the "
    "question; boxes in an answer (`{<x1><y1><x2><y2>}`, 0-100 of the picture) are drawn below the picture."
)


def import_gradio():
    try:
        import gradio
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(INSTALL_HINT) from error
    return gradio


def with_task(token: str, text: str) -> str:
    """`text` led by `token`, replacing the task token it already had."""
    text = text.strip()
    for known in TASK_TOKENS:
        if text.startswith(known):
            text = text[len(known) :].strip()
    return f"{token} {text}"


def transcript(turns) -> list[dict]:
    """Turns as the chatbot shows them, shown as written: box and phrase tags must not become HTML."""
    messages = []
    for question, answer in turns:
        messages.append({"role": "user", "content": _literal(question)})
        messages.append({"role": "assistant", "content": _literal(answer)})
    return messages


def _literal(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def build_app(stream_fn: StreamFn, end_symbol: str = "###"):
    """The Blocks app; `stream_fn` answers (a `ModelStream` for a checkpoint)."""
    gr = import_gradio()
    defaults = GenerationSettings()

    def open_upload(path):
        """The uploaded picture, or an error naming the file as the visitor knows it (not its temporary path)."""
        if path is None:
            return None
        try:
            return to_rgb(load_image(path))
        except ImageLoadError as error:
            raise gr.Error(
                f"Cannot read {Path(path).name} as a picture; upload a PNG, JPEG, WebP or another image file."
            ) from error

    def respond(path, question, turns, max_new_tokens, temperature, top_p, greedy):
        question = question.strip()
        if not question:
            return
        try:
            settings = GenerationSettings(
                int(max_new_tokens), temperature, top_p, defaults.repetition_penalty, greedy
            )
        except ValueError as error:
            raise gr.Error(str(error)) from error
        session = ChatSession(stream_fn, settings, end_symbol, image=open_upload(path))
        session.turns = [tuple(turn) for turn in turns]
        answer = ""
        try:
            for piece in session.ask(question):
                answer += piece
                yield transcript([*session.turns, (question, answer)]), gr.skip(), gr.skip()
        except ValueError as error:  # the processor's "prompt longer than the context"
            raise gr.Error(f"{error} Press 'Clear conversation' to start over.") from error
        yield transcript(session.turns), session.turns, session.annotated_image()

    with gr.Blocks(title="TinyGPT-V", analytics_enabled=False) as app:
        turns = gr.State([])
        asked = gr.State("")
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=2):
                upload = gr.File(
                    label="Upload a picture", file_types=["image"], type="filepath", elem_id="upload"
                )
                picture = gr.Image(
                    label="Picture", type="pil", interactive=False, format="png", elem_id="picture"
                )
                annotated = gr.Image(
                    label="Boxes in the last answer",
                    type="pil",
                    interactive=False,
                    format="png",
                    elem_id="annotated",
                )
                gr.Examples([[str(EXAMPLE_IMAGE)]], inputs=[upload], label="Example picture")
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Conversation", elem_id="chatbot", height=420)
                with gr.Row():
                    tasks = {
                        token: gr.Button(token, size="sm", elem_id=f"task-{token[1:-1]}")
                        for token in TASK_TOKENS
                    }
                question = gr.Textbox(
                    placeholder="Ask about the picture", show_label=False, elem_id="question"
                )
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    clear = gr.Button("Clear conversation", elem_id="clear")
                with gr.Accordion("Generation settings", open=False):
                    max_new_tokens = gr.Slider(
                        1,
                        1024,
                        value=defaults.max_new_tokens,
                        step=1,
                        label="Max new tokens",
                        elem_id="max-new-tokens",
                    )
                    temperature = gr.Slider(
                        0.05, 2.0, value=defaults.temperature, step=0.05, label="Temperature"
                    )
                    top_p = gr.Slider(0.05, 1.0, value=defaults.top_p, step=0.05, label="Top-p")
                    greedy = gr.Checkbox(
                        value=defaults.greedy,
                        label="Greedy decoding (reproducible, best for boxes)",
                        elem_id="greedy",
                    )

        # A new picture starts a new conversation; an unreadable one leaves no picture and says why.
        upload.change(lambda: (None, [], [], None), None, [picture, turns, chatbot, annotated]).then(
            open_upload, upload, picture
        )
        for token, button in tasks.items():
            button.click(lambda text, token=token: with_task(token, text), question, question)
        # The question leaves the textbox at once, so typing the next one during an answer is never overwritten.
        settings = [max_new_tokens, temperature, top_p, greedy]
        for trigger in (send.click, question.submit):
            trigger(lambda text: ("", text), question, [question, asked]).then(
                respond, [upload, asked, turns, *settings], [chatbot, turns, annotated]
            )
        clear.click(lambda: ([], [], None), None, [turns, chatbot, annotated])
    return app


def launch(app, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Serve `app` on `host` (localhost unless asked otherwise) with system fonts, so nothing is fetched online."""
    gr = import_gradio()
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    return app.queue().launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        ssr_mode=False,
        theme=theme,
        quiet=True,
    )


def serve(model: str, host: str = "127.0.0.1", port: int = 7860, quantization: str | None = None) -> None:
    import_gradio()  # a missing extra fails before the slow model load
    stream = ModelStream(*load_chat_model(model, quantization))
    launch(build_app(stream, stream.end_symbol), host, port)
