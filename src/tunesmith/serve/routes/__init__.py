"""The HTTP routes of the server, one router per concern; `tunesmith.serve.app` mounts them."""

from tunesmith.serve.routes import admin, completions, feedback, models

ROUTERS = [completions.router, models.router, feedback.router, admin.router]

__all__ = ["ROUTERS"]
