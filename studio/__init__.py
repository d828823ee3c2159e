"""SIGMA Studio, the Gradio app (``python app.py``). It uses only sigma_core's public API.

- ``options``: the command-line flags; ``main``: start-up (engine, page, server).
- ``engine``: the one pipeline behind a lock, the per-session cancel tokens.
- ``forms``: the controls' values as frozen data, to and from a Composition.
- ``compose``, ``slots``, ``runs``, ``presets``, ``api``: the handlers, no gradio inside.
- ``views``: HTML and Markdown fragments; ``layout``: the Blocks page and its events.
"""
