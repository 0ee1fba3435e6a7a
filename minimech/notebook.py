"""What lets one lesson file work as a script and as a Jupyter notebook: figures and progress bars.

    show(fig, "minimech-out/02_ablation.png")   # saves the PNG; in Jupyter, also displays it inline
    show(plot.heatmap(...))                     # a PNG minimech.plot already wrote: displayed in Jupyter
    for step in tqdm(range(n)): ...             # a widget in Jupyter (with ipywidgets), text elsewhere
    with forward_progress(model, total=n): ...  # a bar counting the model's forward passes in the block

In a script nothing is displayed: figures are files. In a notebook the same call shows the figure once (the
figure is closed, so matplotlib's inline backend does not show it a second time at the end of the cell).
"""

from __future__ import annotations

import io
import sys
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path


def in_notebook() -> bool:
    """Whether this code runs in a Jupyter kernel (not a script, not the plain IPython shell)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and getattr(shell, "kernel", None) is not None


def show(figure, path=None, dpi: int = 110) -> Path | None:
    """Save `figure` (a matplotlib Figure) as a PNG at `path` and, in a notebook, display it inline; then close it.
    `figure` may instead be the path of a PNG already written (what minimech.plot's functions return): it is
    displayed in a notebook. Returns the PNG's path (None for a figure shown without a path)."""
    if isinstance(figure, (str, Path)):
        png_path = Path(figure)
        if not png_path.is_file():
            raise FileNotFoundError(f"show({str(figure)!r}): no such PNG; pass a matplotlib Figure or a PNG's path")
        if in_notebook():
            _display_png(png_path.read_bytes())
        return png_path
    if not hasattr(figure, "savefig"):
        raise TypeError(f"show() takes a matplotlib Figure or a PNG's path, got {type(figure).__name__}")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    png = buffer.getvalue()
    saved = None
    if path is not None:
        saved = Path(path)
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_bytes(png)
    if in_notebook():
        _display_png(png)
    _close(figure)
    return saved


def _display_png(png: bytes) -> None:
    from IPython.display import Image, display

    display(Image(data=png, format="png"))


def _close(figure) -> None:
    """Forget a figure: pyplot's registry lets go of it (so the inline backend does not draw it again)."""
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close(figure)
    figure.clear()


@lru_cache(maxsize=1)
def _bar_class():
    """tqdm's notebook widget in Jupyter when ipywidgets is there; otherwise the text bar. (tqdm.auto would warn
    "IProgress not found" in a notebook without ipywidgets; here a missing widget library just means text.)"""
    if in_notebook():
        try:
            import ipywidgets  # noqa: F401  (the widget tqdm.notebook draws)
            from tqdm.notebook import tqdm as notebook_tqdm

            return notebook_tqdm
        except ImportError:
            pass
    from tqdm.std import tqdm as text_tqdm

    return text_tqdm


def tqdm(*args, **kwargs):
    """A progress bar, called like tqdm.tqdm: a widget in Jupyter (with ipywidgets), text elsewhere."""
    return _bar_class()(*args, **kwargs)


@contextmanager
def forward_progress(model, total: int | None = None, desc: str = "forward passes", disable: bool = False):
    """A progress bar counting the model's forward passes inside the block (hooks that change nothing, on the
    embeddings and on ln_final: a run counts where it starts, or where it ends if it started at a later layer, as
    causal_trace's restored runs do): progress for work that shows none itself, such as a learner's loop of patched
    runs on GPT-2."""
    with tqdm(total=total, desc=desc, unit=" forwards", disable=disable, leave=False) as bar:
        started = [False]  # a run has passed the embeddings and not yet reached ln_final

        def start(embed, hook):  # hooks return None: the activation goes on unchanged
            started[0] = True
            bar.update(1)

        def end(normalized, hook):
            if not started[0]:  # a run that began after the embeddings (start_at_layer)
                bar.update(1)
            started[0] = False

        with model.hooks([("hook_embed", start), ("ln_final.hook_normalized", end)]):
            yield bar
