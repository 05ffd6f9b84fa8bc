"""A display that a thread fills in after its cell has finished (background cells' answers).

JupyterLab hands an ``update_display_data`` to a cell only while that cell's request is
still alive, so an update sent after the cell finished is dropped. In a Jupyter kernel with
ipywidgets the display is also an ``Output`` widget: its state travels by comm id and
reaches the cell at any time, also while other cells run. Every bundle sent carries the
widget view *and* a text twin: a frontend without widgets (nbclient, so saved notebooks and
nbval) keeps the answer as text, and a frontend with widgets never swaps the view for that
fallback (an update without the view key would replace the widget by its text/html).
Outside a kernel (terminal IPython) it is a plain display handle: updates are printed.
"""

from __future__ import annotations

from typing import Any

VIEW_MIME = "application/vnd.jupyter.widget-view+json"


class LateDisplay:
    """One output in the current cell; ``update(bundle)`` replaces it, from any thread."""

    def __init__(self, bundle: dict[str, Any]):
        from IPython.display import display

        self.widget = _output_widget()
        if self.widget is not None:
            self.widget.outputs = (_output(bundle),)
        self.handle = display(self._with_view(bundle), raw=True, display_id=True)

    def update(self, bundle: dict[str, Any]) -> None:
        # the widget first: a frontend that takes the display update then renders the
        # widget's new state, not the old one
        if self.widget is not None:
            self.widget.outputs = (_output(bundle),)
        self.handle.update(self._with_view(bundle), raw=True)

    def _with_view(self, bundle: dict[str, Any]) -> dict[str, Any]:
        if self.widget is None:
            return bundle
        view = {"model_id": self.widget.model_id, "version_major": 2, "version_minor": 0}
        return {VIEW_MIME: view, **bundle}


def widget_kernel() -> bool:
    """True in a Jupyter kernel (ZMQ shell) with ipywidgets installed."""
    from IPython import get_ipython

    if type(get_ipython()).__name__ != "ZMQInteractiveShell":
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def _output_widget() -> Any:
    if not widget_kernel():
        return None
    import ipywidgets

    return ipywidgets.Output()


def _output(bundle: dict[str, Any]) -> dict[str, Any]:
    return {"output_type": "display_data", "data": bundle, "metadata": {}}
