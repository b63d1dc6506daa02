"""Matplotlib without a display, and figures as PNG for self-contained HTML reports."""

from __future__ import annotations

import base64
import io
from typing import Any


def pyplot() -> Any:
    """`matplotlib.pyplot` on the Agg backend: plots are written to files, never shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_base64(fig: Any, dpi: int = 100) -> str:
    """The figure as a base64 PNG (for an `<img src="data:image/png;base64,...">`); the figure is closed."""
    plt = pyplot()
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()
