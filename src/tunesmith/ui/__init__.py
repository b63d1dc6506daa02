"""The web app (`tunesmith ui`): the whole lifecycle in the browser, over the same store and functions as the CLI."""

from tunesmith.ui.app import create_ui_app, run_ui

__all__ = ["create_ui_app", "run_ui"]
