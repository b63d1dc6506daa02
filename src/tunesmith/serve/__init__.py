"""The serve stage: an OpenAI-compatible server over the registry (see `tunesmith.serve.app`)."""

from tunesmith.serve.app import Server, create_app, run_server, serve_in_background

__all__ = ["Server", "create_app", "run_server", "serve_in_background"]
