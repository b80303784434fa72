import io
import logging
import warnings

import matplotlib
import numpy as np
import pytest
from matplotlib import font_manager, rcParams
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, findfont, get_font
from matplotlib.ft2font import FT2Font

from qa_lib.plots import (
    cjk_font_path,
    plot_learning_curves,
    plot_length_histogram,
    plot_span_probabilities,
    use_cjk_font,
)

matplotlib.use("Agg")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHINESE_SAMPLE = "损失中国准确率词元"


def history(epochs=3, steps=40, with_scores=True):
    return {
        "epochs": [
            {"epoch": e, "loss": 3.0 / e, "start_acc": 0.2 * e, "end_acc": 0.25 * e, "lr": 1e-3, "samples_per_s": 20.0}
            | ({"em": 20.0 * e, "f1": 25.0 * e} if with_scores else {})
            for e in range(1, epochs + 1)
        ],
        "steps": [{"step": s, "loss": 3.0 * 0.97**s, "lr": 1e-3} for s in range(1, steps + 1)],
    }


def span_inputs(length):
    rng = np.random.default_rng(0)
    tokens = list("张伟出生于1987年3月12日。" * (length // 16 + 1))[:length]
    start, end = rng.random(length), rng.random(length)
    return tokens, start / start.sum(), end / end.sum()


def render_problems(figure, caplog):
    """Warnings and matplotlib log records raised while rendering ``figure`` to PNG."""
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, logger="matplotlib"):
        warnings.simplefilter("always")
        figure.savefig(io.BytesIO(), format="png")
    return [str(w.message) for w in caught] + [record.getMessage() for record in caplog.records]


def test_use_cjk_font_registers_the_packaged_font_once_and_returns_its_family():
    family = use_cjk_font()
    path = str(cjk_font_path())
    registered = sum(entry.fname == path for entry in font_manager.fontManager.ttflist)
    assert use_cjk_font() == family == FT2Font(path).family_name
    assert sum(entry.fname == path for entry in font_manager.fontManager.ttflist) == registered > 0
    assert rcParams["font.sans-serif"][0] == family and rcParams["font.sans-serif"].count(family) == 1
    assert rcParams["font.family"] == ["sans-serif"] and rcParams["axes.unicode_minus"] is False


def test_chinese_text_resolves_to_the_cjk_font_which_has_the_glyphs():
    """The family may resolve to the packaged file or to a system copy of the same family (a Debian
    machine with fonts-noto-cjk has one inside a .ttc collection); either must hold every glyph."""
    family = use_cjk_font()
    text = Figure().text(0.5, 0.5, CHINESE_SAMPLE)
    for properties in (FontProperties(family=family), text.get_fontproperties()):
        font = get_font(findfont(properties))
        assert font.family_name == family
        assert all(font.get_char_index(ord(ch)) != 0 for ch in CHINESE_SAMPLE)


def test_missing_glyph_check_catches_a_latin_only_font(caplog):
    """The check below can fail: DejaVu Sans (matplotlib's default) has no Chinese glyphs."""
    use_cjk_font()
    with matplotlib.rc_context({"font.family": ["sans-serif"], "font.sans-serif": ["DejaVu Sans"]}):
        figure = Figure()
        figure.text(0.5, 0.5, CHINESE_SAMPLE)
        problems = render_problems(figure, caplog)
    assert any("missing from" in problem for problem in problems)


@pytest.mark.parametrize(
    "make_figure",
    [
        lambda: plot_learning_curves(history()),
        lambda: plot_length_histogram([300, 480, 700, 900]),
        lambda: plot_span_probabilities(*span_inputs(40), predicted=(5, 9), gold=(6, 10)),
    ],
    ids=["learning_curves", "length_histogram", "span_probabilities"],
)
def test_plots_render_chinese_without_missing_glyphs(make_figure, caplog, capfd):
    figure = make_figure()
    assert not [problem for problem in render_problems(figure, caplog) if "missing from" in problem]
    assert capfd.readouterr().err == ""


def test_each_plot_saves_a_png(tmp_path):
    tokens, start, end = span_inputs(30)
    figures = {
        "curves.png": lambda path: plot_learning_curves(history(), path),
        "lengths.png": lambda path: plot_length_histogram([100, 600], path=path),
        "span.png": lambda path: plot_span_probabilities(tokens, start, end, gold=(3, 5), path=path),
    }
    for name, plot in figures.items():
        path = tmp_path / "figures" / name
        assert isinstance(plot(path), Figure)
        assert path.read_bytes().startswith(PNG_SIGNATURE) and path.stat().st_size > 1000


def test_figures_display_in_notebooks_without_pyplot():
    assert plot_length_histogram([10, 20, 30])._repr_png_().startswith(PNG_SIGNATURE)


def test_learning_curves_without_evaluation_say_so():
    figure = plot_learning_curves(history(with_scores=False))
    loss_axes, accuracy_axes, score_axes = figure.axes
    assert len(loss_axes.lines) == 3  # per-step, smoothed, per-epoch
    assert len(accuracy_axes.lines) == 2
    assert not score_axes.lines and any("no data" in text.get_text() for text in score_axes.texts)


def test_learning_curves_with_epochs_only_plot_epoch_loss():
    figure = plot_learning_curves({"epochs": [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.0}], "steps": []})
    (line,) = figure.axes[0].lines
    assert list(line.get_xdata()) == [1, 2] and list(line.get_ydata()) == [2.0, 1.0]


def test_length_histogram_title_gives_the_share_above_max_length():
    figure = plot_length_histogram([100, 600, 700, 200, 300], max_length=512)
    assert "40.0%" in figure.axes[0].get_title()
    assert [line.get_xdata()[0] for line in figure.axes[0].lines] == [512]


def test_long_context_shows_max_tokens_around_the_spans():
    tokens, start, end = span_inputs(500)
    figure = plot_span_probabilities(tokens, start, end, predicted=(300, 305), gold=(310, 312), max_tokens=60)
    labels = figure.axes[1].get_xticklabels()
    positions = [int(tick) for tick in figure.axes[1].get_xticks()]
    assert len(labels) == 60
    assert positions[0] <= 300 and positions[-1] >= 312
    assert [label.get_text() for label in labels] == [tokens[p] for p in positions]
    legend_texts = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert any("predicted" in text for text in legend_texts) and any("gold" in text for text in legend_texts)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: plot_learning_curves({"epochs": [], "steps": []}), "neither"),
        (lambda: plot_learning_curves({"steps": [{"step": 1}]}), "'loss'"),
        (lambda: plot_length_histogram([]), "empty"),
        (lambda: plot_span_probabilities(["a", "b"], [0.5, 0.5], [1.0]), "equally long"),
        (lambda: plot_span_probabilities(["a", "b"], [0.5, 0.5], [0.5, 0.5], gold=(1, 2)), "gold"),
        (lambda: plot_span_probabilities(["a", "b"], [0.5, 0.5], [0.5, 0.5], predicted=(1, 0)), "predicted"),
    ],
)
def test_bad_input_raises_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
