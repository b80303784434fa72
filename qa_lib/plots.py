"""Plots for the kit, with Chinese text that renders in Colab, JupyterLab and terminals alike.

matplotlib's default font (DejaVu Sans) has no Chinese glyphs: every Chinese character becomes a box
and a "Glyph ... missing from font(s)" warning. ``use_cjk_font`` registers the Noto Sans CJK SC font
that the ``mplfonts`` package ships, so no system font and no network are needed.

All plot functions return a figure that is not managed by pyplot: it is never shown twice in a
notebook, never counts towards pyplot's "too many open figures" warning, and needs no ``plt.show``.
It displays itself in a notebook (``_repr_png_``) even where pyplot was never imported.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import font_manager, rcParams
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

CJK_FONT_FILE = "NotoSansCJKsc-Regular.otf"  # Noto Sans CJK SC (SIL Open Font License), shipped in mplfonts
SAVE_DPI = 100
START_COLOUR, END_COLOUR = "tab:blue", "tab:orange"
PREDICTED_COLOUR, GOLD_COLOUR = "tab:red", "tab:green"
# Tokens shown by plot_span_probabilities: one readable tick label per token fits in about this many.
DEFAULT_MAX_TOKENS = 60


class NotebookFigure(Figure):
    """A plain matplotlib figure that Jupyter and Colab display as PNG without pyplot's help."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=SAVE_DPI, bbox_inches="tight")
        return buffer.getvalue()


def cjk_font_path() -> Path:
    """The Noto Sans CJK SC font file inside the installed ``mplfonts`` package."""
    try:
        from mplfonts.conf import FONT_DIR
    except ImportError as error:
        raise ModuleNotFoundError("Chinese plot labels need the mplfonts package: pip install mplfonts") from error
    path = Path(FONT_DIR) / CJK_FONT_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from mplfonts; reinstall it: pip install --force-reinstall mplfonts"
        )
    return path


def use_cjk_font() -> str:
    """Make matplotlib draw Chinese with Noto Sans CJK SC and return that family name.

    Registers the font file once (later calls only re-assert the settings), puts the family first in
    ``font.sans-serif`` and selects the sans-serif family, since a notebook that switched to serif would
    lose the Chinese glyphs again. Glyphs the CJK font lacks fall back to the fonts listed after it."""
    path = str(cjk_font_path())
    entries = [entry for entry in font_manager.fontManager.ttflist if entry.fname == path]
    if not entries:
        font_manager.fontManager.addfont(path)
        entries = [entry for entry in font_manager.fontManager.ttflist if entry.fname == path]
    family = entries[0].name
    rcParams["font.family"] = ["sans-serif"]
    rcParams["font.sans-serif"] = [family] + [name for name in rcParams["font.sans-serif"] if name != family]
    # The ASCII hyphen renders the same in every font; U+2212 would depend on the fallback chain.
    rcParams["axes.unicode_minus"] = False
    return family


def _new_figure(**options) -> Figure:
    use_cjk_font()
    return NotebookFigure(layout="constrained", **options)


def _finish(figure: Figure, path: str | os.PathLike | None) -> Figure:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=SAVE_DPI)
    return figure


def _require_fields(records: Sequence[dict], name: str, fields: Sequence[str]) -> None:
    for index, record in enumerate(records):
        for field in fields:
            if field not in record:
                raise ValueError(f"history[{name!r}][{index}] lacks field {field!r}: {record}")


def _moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Mean over the last ``window`` values at each point (shorter at the start), to see the trend of a noisy loss."""
    cumulative = np.cumsum(np.insert(np.asarray(values, dtype=float), 0, 0.0))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (cumulative[ends] - cumulative[starts]) / (ends - starts)


def _plot_metric_per_epoch(axes: Axes, epochs: Sequence[dict], metrics: dict[str, str], ylabel: str) -> None:
    """One line per metric; epochs without a metric are skipped, a panel with none says so."""
    plotted = False
    for key, label in metrics.items():
        points = [(record["epoch"], record[key]) for record in epochs if record.get(key) is not None]
        if points:
            axes.plot(*zip(*points), marker="o", label=label)
            plotted = True
    if plotted:
        axes.legend()
    else:
        axes.text(0.5, 0.5, "尚无数据 (no data yet)", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel("轮次 (epoch)")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel(ylabel)


def _plot_loss(axes: Axes, steps: Sequence[dict], epochs: Sequence[dict]) -> None:
    """Step loss (raw and smoothed) with the epoch means placed at the step where each epoch ends.

    Epoch ends are spread evenly over the logged steps: the history stores no step count per epoch."""
    if steps:
        step_numbers = [record["step"] for record in steps]
        losses = [record["loss"] for record in steps]
        axes.plot(step_numbers, losses, alpha=0.35, color=START_COLOUR, label="每步 (per step)")
        window = max(1, len(losses) // 20)
        axes.plot(
            step_numbers, _moving_average(losses, window), color=START_COLOUR, label=f"滑动平均 (mean of {window})"
        )
        epoch_x = np.linspace(0, step_numbers[-1], len(epochs) + 1)[1:]
        axes.set_xlabel("步数 (step)")
    else:
        epoch_x = [record["epoch"] for record in epochs]
        axes.set_xlabel("轮次 (epoch)")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    epoch_points = [(x, record["loss"]) for x, record in zip(epoch_x, epochs) if record.get("loss") is not None]
    if epoch_points:
        axes.plot(*zip(*epoch_points), "o-", color=END_COLOUR, label="每轮平均 (epoch mean)")
    axes.set_ylabel("损失 (loss)")
    axes.set_title("训练损失 (training loss)")
    axes.legend()


def plot_learning_curves(history: dict, path: str | os.PathLike | None = None) -> Figure:
    """Loss, start/end accuracy and EM/F1 of a ``train_qa`` history, saved as PNG to ``path`` if given.

    ``history`` is ``{"epochs": [{"epoch", "loss", "start_acc", "end_acc", "em", "f1", ...}],
    "steps": [{"step", "loss", "lr"}]}``; either list may be short, and metrics may be missing."""
    steps, epochs = history.get("steps", []), history.get("epochs", [])
    if not steps and not epochs:
        raise ValueError("history has neither 'steps' nor 'epochs' records: nothing to plot")
    _require_fields(steps, "steps", ("step", "loss"))
    _require_fields(epochs, "epochs", ("epoch",))
    figure = _new_figure(figsize=(14, 4))
    loss_axes, accuracy_axes, score_axes = figure.subplots(1, 3)
    _plot_loss(loss_axes, steps, epochs)
    _plot_metric_per_epoch(
        accuracy_axes, epochs, {"start_acc": "起点 (start)", "end_acc": "终点 (end)"}, "准确率 (accuracy)"
    )
    accuracy_axes.set_title("起止位置准确率 (start/end accuracy)")
    _plot_metric_per_epoch(score_axes, epochs, {"em": "EM", "f1": "F1"}, "得分 (score)")
    score_axes.set_title("验证集 EM/F1 (evaluation)")
    return _finish(figure, path)


def plot_length_histogram(
    token_lengths: Sequence[int], max_length: int = 512, path: str | os.PathLike | None = None
) -> Figure:
    """Histogram of question+context token counts, with ``max_length`` marked and the share above it
    in the title: those questions need sliding windows, truncation cuts their contexts."""
    lengths = np.asarray(token_lengths, dtype=int)
    if lengths.size == 0:
        raise ValueError("token_lengths is empty: nothing to plot")
    above = float(np.mean(lengths > max_length))
    figure = _new_figure(figsize=(8, 4.5))
    axes = figure.subplots()
    axes.hist(lengths, bins=min(40, max(5, len(np.unique(lengths)))), color=START_COLOUR, alpha=0.8)
    axes.axvline(max_length, color=PREDICTED_COLOUR, linestyle="--", label=f"max_length = {max_length}")
    axes.set_xlabel("问题+上下文的词元数 (question + context tokens)")
    axes.set_ylabel("问题数 (questions)")
    axes.set_title(f"{100 * above:.1f}% 超过 {max_length} 个词元 ({100 * above:.1f}% longer than {max_length} tokens)")
    axes.legend()
    return _finish(figure, path)


def _check_span(span: tuple[int, int] | None, length: int, name: str) -> None:
    if span is not None and not 0 <= span[0] <= span[1] < length:
        raise ValueError(f"{name} span {span} is not a (start, end) pair with start <= end inside 0..{length - 1}")


def _shown_range(length: int, spans: Sequence[tuple[int, int]], start_probs, end_probs, max_tokens: int) -> range:
    """At most ``max_tokens`` token positions centred on the spans (or on the most likely span)."""
    if spans:
        first, last = min(span[0] for span in spans), max(span[1] for span in spans)
    else:
        first, last = int(np.argmax(start_probs)), int(np.argmax(end_probs))
    centre = (first + last) // 2
    low = min(max(0, centre - max_tokens // 2), max(0, length - max_tokens))
    return range(low, min(length, low + max_tokens))


def plot_span_probabilities(
    tokens: Sequence[str],
    start_probs,
    end_probs,
    predicted: tuple[int, int] | None = None,
    gold: tuple[int, int] | None = None,
    path: str | os.PathLike | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> Figure:
    """Start and end probabilities over context tokens, tokens as tick labels, with the predicted and
    gold spans (inclusive token indices) shaded. Long contexts show ``max_tokens`` tokens around the spans."""
    start_probs, end_probs = np.asarray(start_probs, dtype=float), np.asarray(end_probs, dtype=float)
    if not len(tokens) == len(start_probs) == len(end_probs) > 0:
        raise ValueError(
            f"tokens, start_probs and end_probs must be non-empty and equally long, "
            f"got {len(tokens)}, {len(start_probs)}, {len(end_probs)}"
        )
    _check_span(predicted, len(tokens), "predicted")
    _check_span(gold, len(tokens), "gold")
    spans = {"预测 (predicted)": (predicted, PREDICTED_COLOUR), "标准答案 (gold)": (gold, GOLD_COLOUR)}
    shown = _shown_range(len(tokens), [span for span, _ in spans.values() if span], start_probs, end_probs, max_tokens)

    figure = _new_figure(figsize=(max(8.0, 0.22 * len(shown)), 5))
    start_axes, end_axes = figure.subplots(2, 1, sharex=True)
    for axes, probs, colour, name in (
        (start_axes, start_probs, START_COLOUR, "起点概率 (start prob.)"),
        (end_axes, end_probs, END_COLOUR, "终点概率 (end prob.)"),
    ):
        axes.bar(shown, probs[shown.start : shown.stop], color=colour, width=0.8)
        axes.set_ylabel(name)
        axes.set_ylim(0, max(1e-6, float(probs[shown.start : shown.stop].max())) * 1.15)
        for label, (span, span_colour) in spans.items():
            if span is not None:
                axes.axvspan(span[0] - 0.5, span[1] + 0.5, color=span_colour, alpha=0.2, label=label)
    if predicted is not None or gold is not None:
        start_axes.legend(loc="upper right")
    end_axes.set_xlim(shown.start - 0.5, shown.stop - 0.5)
    end_axes.set_xticks(list(shown), [tokens[index] for index in shown], fontsize=8)
    end_axes.set_xlabel(f"上下文词元 {shown.start}–{shown.stop - 1}，共 {len(tokens)} 个 (context tokens shown)")
    start_axes.set_title("答案起止位置的概率 (start/end probabilities)")
    return _finish(figure, path)
