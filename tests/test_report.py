"""Run reports: metrics.jsonl read back, the Markdown table, the curves picture, and ``frs report``."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from frs_cli.cli.app import app
from frs_cli.errors import ConfigError, DataError
from frs_cli.eval.run_log import label_runs, markdown_table, read_run
from frs_cli.viz.plots import CHART_H, CHART_W, colour_of, line_chart, nice_ticks, run_report

runner = CliRunner()


def write_run(folder, aps, terms=("classification", "bbox_regression"), iters=40, scale=1.0, apl=None, tail=""):
    """A metrics.jsonl as the training loop writes it: a step record every 5 iterations, an eval per epoch."""
    folder.mkdir(parents=True, exist_ok=True)
    lines, per_epoch = [], iters // len(aps)
    for it in range(0, iters, 5):
        losses = {t: scale * (1.0 + k) / (1 + it) for k, t in enumerate(terms)}
        lines.append({"epoch": it // per_epoch + 1, "iter": it, "lr": 0.01, **losses, "loss": sum(losses.values()),
                      "img_s": 100.0 + it, "data_wait": 0.1})
        if (it + 5) % per_epoch == 0:
            epoch = (it + 5) // per_epoch
            lines.append({"epoch": epoch, "eval": {"AP": aps[epoch - 1], "AP50": 0.5, "AP75": 0.25, "APs": 0.1,
                                                   "APm": 0.2, "APl": apl}})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + tail)
    return folder


def test_read_run_keeps_the_later_record_of_a_resumed_iteration_and_skips_a_torn_last_line(tmp_path):
    run = write_run(tmp_path / "r", [0.1, 0.2], tail=json.dumps({"epoch": 2, "iter": 10, "lr": 0.01, "loss": 9.0})
                    + "\n" + '{"epoch": 2, "it')
    log = read_run(run)
    assert log.name == "r" and sorted(log.evals) == [1, 2]
    assert log.steps[10]["loss"] == 9.0  # appended again after a resume: the later one stands
    assert log.terms == ["classification", "bbox_regression", "loss"]
    xs, ys = log.series("classification")
    assert xs[:3] == [0.0, 5.0, 15.0] and ys[:2] == pytest.approx([1.0, 1 / 6])  # iteration 10 was replaced
    assert log.eval_series("AP") == ([1.0, 2.0], [0.1, 0.2])
    assert log.eval_series("APl") == ([], [])  # undefined: left out, not plotted as 0


def test_read_run_errors_are_one_line_naming_the_place(tmp_path):
    with pytest.raises(DataError, match="holding metrics.jsonl, got '.*nowhere', which does not exist"):
        read_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="expected a run folder holding metrics.jsonl, got '.*empty' without one"):
        read_run(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.jsonl").write_text('{"iter": 0, "loss": 1.0}\nnot json\n{"iter": 5}\n')
    with pytest.raises(DataError, match="got a parse error on line 2: Expecting value at column 1$"):
        read_run(tmp_path / "bad")
    (tmp_path / "bad" / "metrics.jsonl").write_text('{"iter": 0, "lo\n{"iter": 5}\n')  # a damaged first line
    with pytest.raises(DataError, match="on line 1: Invalid control character at column 16$"):
        read_run(tmp_path / "bad")
    (tmp_path / "bad" / "metrics.jsonl").write_text('{"iter": 0}\n[1, 2]\n')
    with pytest.raises(DataError, match="expected a step record .* on line 2"):
        read_run(tmp_path / "bad")


def test_a_run_whose_only_line_is_still_being_written_reads_as_a_run_with_no_steps_yet(tmp_path):
    """A run that has just started, its first record half-written (before: a parse error on line 1, so the run
    could not be reported); a first line that is no record at all is still refused."""
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "metrics.jsonl").write_text('{"iter": 1, "lo')
    log = read_run(tmp_path / "new")
    assert log.steps == {} and log.evals == {}
    assert markdown_table([log]).splitlines()[2].startswith("| new | \u2013 |")
    (tmp_path / "new" / "metrics.jsonl").write_text("hello")
    with pytest.raises(DataError, match="got a parse error on line 1"):
        read_run(tmp_path / "new")


def test_markdown_table_has_a_row_per_run_with_last_metrics_best_ap_and_a_dash_for_undefined(tmp_path):
    a = read_run(write_run(tmp_path / "alone", [0.10, 0.30, 0.20], iters=60))
    b = read_run(write_run(tmp_path / "frs", [0.2, 0.4], apl=0.55))
    lines = markdown_table([a, b]).splitlines()
    assert lines[0] == ("| run | epoch | AP | AP50 | AP75 | APs | APm | APl | best AP (epoch) | iterations | last loss "
                        "| img/s |")
    assert lines[2] == "| alone | 3 | 20.0 | 50.0 | 25.0 | 10.0 | 20.0 | \u2013 | 30.0 (2) | 56 | 0.05357 | 127.5 |"
    assert lines[3].startswith("| frs | 2 | 40.0 | 50.0 | 25.0 | 10.0 | 20.0 | 55.0 | 40.0 (2) | 36 |")
    assert lines[3].endswith(" | 117.5 |")  # the median of an even count: the mean of the middle two (115, 120)
    assert len(lines) == 4
    # four significant digits in every row, trailing zeros kept (before: 2.85 beside 0.05357)
    c = read_run(write_run(tmp_path / "c", [0.2], iters=5, tail=json.dumps({"epoch": 1, "iter": 5, "loss": 2.85})))
    assert markdown_table([c]).splitlines()[2].split(" | ")[-2] == "2.850"


def test_nice_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0.0, 0.37) == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert nice_ticks(0, 552) == [0, 200, 400, 600]
    assert nice_ticks(3.0, 3.0)[0] <= 3.0 <= nice_ticks(3.0, 3.0)[-1]


def colour_rows(picture, colour, box):
    """Row indices inside ``box`` (left, top, right, bottom) where pixels have exactly ``colour``."""
    px = np.asarray(picture)[box[1]:box[3], box[0]:box[2]]
    return np.nonzero(np.all(px == np.array(colour), axis=-1))[0]


def test_report_draws_each_run_in_its_colour_higher_ap_higher_up(tmp_path):
    low = read_run(write_run(tmp_path / "low", [0.05, 0.1]))
    high = read_run(write_run(tmp_path / "high", [0.3, 0.4], terms=("classification", "frs_feature")))
    picture = run_report([low, high])
    charts = 1 + 3 + 1  # AP; classification, bbox_regression, frs_feature; loss
    assert picture.width == 3 * CHART_W and picture.height > 2 * CHART_H
    legend_h = picture.height - 2 * CHART_H
    ap_box = (0, legend_h, CHART_W, legend_h + CHART_H)
    low_rows, high_rows = colour_rows(picture, colour_of(0), ap_box), colour_rows(picture, colour_of(1), ap_box)
    assert len(low_rows) > 20 and len(high_rows) > 20
    assert high_rows.mean() < low_rows.mean() - 50  # higher AP is drawn higher up
    frs_box = (0, legend_h + CHART_H, CHART_W, legend_h + 2 * CHART_H)  # 4th chart, 2nd row: frs_feature
    assert len(colour_rows(picture, colour_of(1), frs_box)) > 20 and len(colour_rows(picture, colour_of(0), frs_box)) == 0
    assert charts == 5


def test_report_refuses_no_runs_and_two_runs_of_one_name(tmp_path):
    with pytest.raises(ConfigError, match="at least one run"):
        run_report([])
    a = read_run(write_run(tmp_path / "x" / "run", [0.1]))
    b = read_run(write_run(tmp_path / "y" / "run", [0.2]))
    with pytest.raises(ConfigError, match="distinct labels, got run twice"):
        run_report([a, b])
    again = read_run(tmp_path / "x" / "run")
    with pytest.raises(ConfigError, match="distinct labels, got x/run twice"):
        run_report(label_runs([a, again, b]))  # the same folder twice stays one label
    # the command refuses it for the table too, not only for the picture (before: two identical rows, exit 0)
    result = runner.invoke(app, ["report", str(tmp_path / "x" / "run"), str(tmp_path / "x" / "run")])
    assert result.exit_code == 1 and "distinct labels, got run twice" in result.stderr and "| run |" not in result.output


def test_runs_of_one_folder_name_are_labelled_by_their_parents_in_the_table_and_the_picture(tmp_path):
    for parent, aps in (("lr0.01", [0.1, 0.2]), ("lr0.02", [0.2, 0.3]), ("deep/lr0.01", [0.3, 0.4])):
        write_run(tmp_path / "sweep" / parent / "out", aps)
    write_run(tmp_path / "alone", [0.1])
    runs = [tmp_path / "sweep" / p / "out" for p in ("lr0.01", "lr0.02", "deep/lr0.01")] + [tmp_path / "alone"]
    assert [r.name for r in label_runs([read_run(r) for r in runs])] == [
        "sweep/lr0.01/out", "sweep/lr0.02/out", "deep/lr0.01/out", "alone"]
    out = tmp_path / "report.png"
    result = runner.invoke(app, ["report", *map(str, runs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = [line.split(" | ")[0] for line in result.stdout.splitlines() if line.startswith("| ")]
    assert rows == ["| run", "| sweep/lr0.01/out", "| sweep/lr0.02/out", "| deep/lr0.01/out", "| alone"]
    assert out.is_file()


def test_empty_chart_says_no_data():
    picture = line_chart([("a", [], [])], "AP", "epoch", {"a": (0, 0, 0)})
    assert picture.size == (CHART_W, CHART_H)


def test_frs_report_prints_the_table_and_writes_the_picture(tmp_path):
    write_run(tmp_path / "alone", [0.1, 0.2])
    write_run(tmp_path / "frs", [0.2, 0.3], terms=("classification", "bbox_regression", "frs_feature", "frs_head"))
    out = tmp_path / "rep" / "report.png"
    result = runner.invoke(app, ["report", str(tmp_path / "alone"), str(tmp_path / "frs"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows] == ["| run", "| alone", "| frs"]
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width == 3 * CHART_W
    result = runner.invoke(app, ["report", str(tmp_path / "alone"), str(tmp_path / "none"), "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "expected a run folder holding metrics.jsonl" in result.stderr and not (tmp_path / "x.png").exists()


def test_the_report_draws_ap_in_percent_as_its_table_and_frs_eval_state_it(tmp_path, monkeypatch):
    """The AP chart said "0..1" beside a table in percent; its series and title are now in percent."""
    from frs_cli.viz import plots

    drawn = []
    real = plots.line_chart
    monkeypatch.setattr(plots, "line_chart", lambda series, title, *a, **k: drawn.append((title, series))
                        or real(series, title, *a, **k))
    run_report([read_run(write_run(tmp_path / "r", [0.05, 0.125]))])
    title, series = drawn[0]
    assert title == "val AP (COCO, %)"
    assert [(label, list(xs), list(ys)) for label, xs, ys in series] == [("r", [1.0, 2.0], [5.0, 12.5])]


def test_the_last_x_tick_of_a_long_run_is_drawn_whole_inside_its_chart():
    """A COCO schedule's iterations (120 000): the last tick's text, centred on the right edge, was cut there."""
    picture = np.asarray(line_chart([("a", [0, 120000], [1.0, 2.0])], "loss", "iteration", {"a": (0, 0, 0)}))
    below = picture[CHART_H - 34:, :]  # the tick texts and the axis label, under the plot area
    dark = below.min(axis=-1) < 200
    assert dark[:, -1].sum() == 0  # nothing touches the chart's right edge: no text cut there
    assert dark[:, -40:].sum() > 10  # and the last tick's text is there
