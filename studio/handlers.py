"""What every event handler shares: a SigmaError becomes a toast and leaves the outputs as they
were (:func:`warns`), and the small UI events' options (:func:`quiet`)."""

from __future__ import annotations

import functools
import html
import inspect
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import gradio as gr

from sigma_core import SigmaError
from studio import views

Handler = TypeVar("Handler", bound=Callable[..., Any])


def warn(error: SigmaError | str) -> None:
    """Show ``error`` (an error, or a note such as autosave's) as a warning toast, the one way
    the studio does: this machine's folders shortened (:func:`views.redact`) and escaped, since
    toasts render HTML and an attribute token such as ``<id>`` must stay visible; each line
    of the text on a line of its own (after a space, so the toast's text, copied or read
    aloud, keeps its words apart)."""
    gr.Warning(html.escape(views.redact(str(error))).replace("\n", " <br>"))


def warns(keep: Callable[[], Any]) -> Callable[[Handler], Handler]:
    """A handler whose SigmaError becomes a warning toast and ``keep()``: its outputs as they
    were (``gr.skip``, ``Page.keep_form`` ...), so the user's work is kept. A generator handler
    (a run) yields ``keep()`` once instead. The wrapper keeps the handler's signature (gradio
    finds gr.Request, gr.EventData and gr.Progress there) and its kind (gradio streams a
    generator)."""

    def decorate(handler: Handler) -> Handler:
        if inspect.isgeneratorfunction(handler):

            @functools.wraps(handler)
            def stream(*args: Any, **kwargs: Any) -> Iterator[Any]:
                try:
                    yield from handler(*args, **kwargs)
                except SigmaError as e:
                    warn(e)
                    yield keep()

            return cast(Handler, stream)

        @functools.wraps(handler)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return handler(*args, **kwargs)
            except SigmaError as e:
                warn(e)
                return keep()

        return cast(Handler, call)

    return decorate


def quiet(**kwargs: Any) -> dict[str, Any]:
    """Event options of the small UI events: never queued behind a run, not in the API."""
    return {"concurrency_limit": None, "api_visibility": "private", **kwargs}
