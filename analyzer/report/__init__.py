"""Report stage: CaptureResult -> text / JSON / CSV / HTML and timing plots.

Knows nothing of bytes or events: its only input is :class:`analyzer.verdict.model.CaptureResult` (and its
:class:`~analyzer.verdict.model.ClientVerdict` list). Public API (the CLI, the web service and the notebooks call
these names)::

    render_text(results) -> str          # verdict table per capture, then reasons, evidence, filter, remedy
    render_json(results) -> str          # exactly analyzer.pipeline.results_document, serialised
    render_csv(results) -> str           # one row per client (analyzer.pipeline.results_dataframe columns)
    render_html(results, title=None) -> str   # one self-contained page, plots embedded as base64 PNG
    write_plots(result, out_dir, prefix="") -> list[Path]
    plot_timeline(result, client) -> Figure
    plot_intervals(result, client) -> Figure

The HTML and plot functions load matplotlib on first use only: importing it costs ~1 s (3 s on a loaded machine),
which `mailpush analyze --format text|json|csv` without --plots never needs.
"""

from analyzer.report.formats import render_csv, render_json, render_text  # noqa: F401

_LAZY = {
    "render_html": "analyzer.report.html",
    "write_plots": "analyzer.report.plots",
    "plot_timeline": "analyzer.report.plots",
    "plot_intervals": "analyzer.report.plots",
    "client_slug": "analyzer.report.plots",
}

__all__ = ["render_text", "render_json", "render_csv", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'analyzer.report' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
