"""Start the studio: flags, engine, page, server. ``python app.py --help`` lists the flags."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sigma_core import SigmaError, frontend
from studio.options import StudioOptions, parse_options

if TYPE_CHECKING:
    from studio.engine import Studio

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no outbound lookups at start


def make_studio(options: StudioOptions) -> Studio:
    """The engine the options ask for, and the folder the studio writes to."""
    from studio.engine import Sessions, Studio, load_engine  # torch: after the flags are checked

    files = options.outputs or Path(tempfile.mkdtemp(prefix="sigma-studio-"))
    files.mkdir(parents=True, exist_ok=True)
    return Studio(load_engine(options), Sessions(), options, files.resolve())


def serve(studio: Studio, **launch: Any) -> Any:
    """Build the page and serve it: a bounded queue, gradio's default of one run at a time,
    files served only from the studio's folder. ``launch`` overrides gradio's launch()."""
    from studio.app import build_app
    from studio.page import PAGE_JS
    from studio.views import CSS

    options = studio.options
    demo = build_app(studio)
    demo.queue(max_size=options.queue_size, default_concurrency_limit=1)
    demo.launch(
        **{
            "server_name": options.host,
            "server_port": options.port,
            "share": options.share,
            "inbrowser": options.inbrowser,
            "allowed_paths": [str(studio.files)],
            "show_error": True,
            "css": CSS,
            "js": PAGE_JS,
            # an upload larger than the core's largest image is refused before it is stored
            "max_file_size": frontend.MAX_IMAGE_BYTES,
            **launch,
        }
    )
    return demo


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, load, serve; an engine that cannot load exits 2 with its message."""
    options = parse_options(argv)
    what = options.model or "the preview engine (random weights)"
    print(f"SIGMA Studio: loading {what}…", file=sys.stderr, flush=True)
    try:
        studio = make_studio(options)
    except SigmaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    serve(studio)
    return 0
