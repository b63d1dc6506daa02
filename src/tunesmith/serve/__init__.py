"""The serve stage: an OpenAI-compatible server over the registry (see `tunesmith.serve.app`)."""

from tunesmith.serve.app import create_app, run_server, serve_in_background
from tunesmith.serve.server import Server

__all__ = ["Server", "create_app", "run_server", "serve_in_background"]
