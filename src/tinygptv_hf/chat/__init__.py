"""Talking to a checkpoint: a conversation object, the model behind it, the terminal chat and the web demo.

`ChatSession` knows nothing about models: it renders its turns as chat messages and hands them to a stream
function (`ModelStream` for a real checkpoint), so the terminal and the web demo share one answer path.
The web demo lives in `web.py` and is not imported here, because Gradio is an optional extra.
"""

from .generation import GenerationSettings, ModelStream, load_chat_model
from .session import ChatSession, until_end_symbol

__all__ = ["ChatSession", "GenerationSettings", "ModelStream", "load_chat_model", "until_end_symbol"]
