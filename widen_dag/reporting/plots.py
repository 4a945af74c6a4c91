"""Small PNG plots for asset metadata (matplotlib, no display needed)."""

from __future__ import annotations

import base64
import io


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig) -> bytes:
    """Render a matplotlib figure to PNG bytes and free it."""
    plt = pyplot()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def line_plot_png(series: dict[str, list[tuple[float, float]]], title: str, xlabel: str, ylabel: str) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    for name, points in series.items():
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    return figure_png(fig)


def markdown_image(png: bytes, alt: str) -> str:
    """Inline PNG for a Markdown metadata value (the Dagster UI renders it)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def length_distribution_png(groups: dict[str, dict[str, list[float]]], title: str) -> bytes:
    """One panel per domain: histograms of shortest / median / longest correct path lengths."""
    plt = pyplot()
    n = max(1, len(groups))
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 3.2), dpi=100, squeeze=False)
    for ax, (domain, series) in zip(axes[0], groups.items(), strict=False):
        for name, values in series.items():
            if values:
                ax.hist(values, bins=30, alpha=0.5, label=name)
        ax.set_title(f"{title}: {domain}")
        ax.set_xlabel("tokens (student tokenizer)")
        ax.set_ylabel("problems")
        ax.legend()
    return figure_png(fig)
