"""The web app (`tunesmith ui`): the whole lifecycle in the browser, over the CLI's store and functions."""

from tunesmith.ui.app import create_ui_app, run_ui, ui_in_background

__all__ = ["create_ui_app", "run_ui", "ui_in_background"]
