"""The training-curves PNG and the progress bar in log files (fast, no model)."""
import io
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from albef_plugin.trainers.plots import (draw_training_curves, plot_training_curves,  # noqa: E402
                                         plotted_eval_series, read_metrics)
from albef_plugin.trainers.progress import LOG_INTERVAL_S, progress_bar  # noqa: E402

MEASURES = ["txt_r1", "txt_r5", "txt_r10", "txt_r_mean", "img_r1", "img_r5", "img_r10",
            "img_r_mean", "r_mean"]


def _retrieval(split, update, dataset="demo_pretrain"):
    record = {"kind": "eval", "split": split, "update": update}
    for ranking in ("itc", "itm"):
        for i, measure in enumerate(MEASURES):
            record[f"{split}/{dataset}/{ranking}_{measure}"] = float(update // 10 + i)
    return record


def _write_run(path):
    records = [{"kind": "train", "update": u, "train/itc": 3.0 - u / 1000, "train/itm": 0.6,
                "total_loss": 3.6 - u / 1000} for u in range(10, 310, 10)]
    records += [_retrieval("val", u) for u in (100, 200, 300)] + [_retrieval("test", 300)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_eval_panel_keeps_r1_both_ways_and_r_mean_per_ranking(tmp_path):
    _write_run(tmp_path / "metrics.jsonl")
    _, evaluation = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert len(evaluation) == 2 * 2 * 9   # everything is read ...
    series = plotted_eval_series(evaluation)
    labels = sorted({(split, label) for split, label, _ in series.values()})
    assert labels == sorted((split, f"{ranking} {measure}") for split in ("val", "test")
                            for ranking in ("itc", "itm") for measure in ("TR@1", "IR@1", "r_mean"))
    val_itm_r1 = series["val/demo_pretrain/itm_txt_r1"]
    assert val_itm_r1[2] == [(100, 10.0), (200, 20.0), (300, 30.0)]   # one point per evaluation


def test_other_metrics_and_several_datasets_keep_their_names():
    evaluation = {"val/vqa/accuracy": [(5, 50.0)],
                  "val/flickr/itc_img_r5": [(5, 1.0)], "val/flickr/itc_img_r1": [(5, 1.0)]}
    series = plotted_eval_series(evaluation)
    assert {key: label for key, (_, label, _) in series.items()} == {
        "val/vqa/accuracy": "vqa/accuracy", "val/flickr/itc_img_r1": "flickr/itc IR@1"}


def test_png_has_both_legends_outside_the_axes(tmp_path):
    _write_run(tmp_path / "metrics.jsonl")
    figure = draw_training_curves(*read_metrics(str(tmp_path / "metrics.jsonl")))
    try:
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        for axis in figure.axes:
            legend = axis.get_legend()
            assert legend is not None
            assert legend.get_window_extent(renderer).x0 >= axis.get_window_extent(renderer).x1
        metric_legend = [t.get_text() for t in figure.axes[1].get_legend().get_texts()]
        assert len(metric_legend) == 12 and "val itm TR@1" in metric_legend
        lines = {line.get_label(): line for line in figure.axes[1].get_lines()}
        itc, itm = lines["val itc TR@1"], lines["val itm TR@1"]
        assert itc.get_color() == itm.get_color() and itc.get_linestyle() != itm.get_linestyle()
        assert itc.get_color() != lines["val itc IR@1"].get_color()
    finally:
        plt.close(figure)
    png = plot_training_curves(str(tmp_path / "metrics.jsonl"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("stream, max_redraws", [(io.StringIO(), 3), (_Terminal(), None)])
def test_progress_bar_is_throttled_in_log_files(stream, max_redraws):
    bar = progress_bar(total=500, initial=0, enabled=True, stream=stream)
    assert bar.mininterval == (LOG_INTERVAL_S if max_redraws else bar.mininterval)
    for update in range(1, 501):
        bar.update(1)
        if update % 10 == 0:   # what the trainer does every log interval
            bar.set_postfix(loss=f"{1 / update:.4f}")
    bar.close()
    redraws = stream.getvalue().count("\r")
    if max_redraws is None:
        assert redraws >= 50            # a terminal shows every loss
    else:
        assert 1 <= redraws <= max_redraws   # start and end, not one line per update
