"""The pure parts: statistics from predictions, benchmark plot points, the command line."""

from __future__ import annotations

import numpy as np

from reporting import benchmarks, stats
from reporting.cli import get_args_parser, main


def test_confusion_rows_are_truth_and_pairs_are_largest_first():
    truth = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    pred = np.array([0, 1, 1, 1, 0, 2, 0, 0, 0])
    matrix = stats.confusion(truth, pred, 3)
    assert matrix.tolist() == [[1, 2, 0], [1, 1, 0], [3, 0, 1]]
    assert stats.accuracy(matrix) == 3 / 9
    assert np.allclose(stats.per_class_accuracy(matrix), [1 / 3, 1 / 2, 1 / 4])
    pairs = stats.most_confused(truth, pred, matrix, pairs=5, examples=2)
    assert [(p.truth, p.predicted, p.count, p.examples) for p in pairs] == [
        (2, 0, 3, (6, 7)), (0, 1, 2, (1, 2)), (1, 0, 1, (4,))]


def test_samples_show_several_classes_right_and_wrong():
    truth = np.array([0, 0, 0, 1, 1, 2, 2, 3])
    pred = np.array([0, 0, 1, 1, 0, 2, 0, 3])
    right, wrong = stats.samples(truth, pred, 3)
    assert right == [0, 3, 5]  # the first right one of classes 0, 1 and 2, not images 0 and 1
    assert wrong == [2, 4, 6]
    assert stats.samples(truth, pred, 5)[1] == [2, 4, 6]  # only three are wrong
    assert stats.samples(np.zeros(4, int), np.zeros(4, int), 2) == ([0, 1], [])


def test_a_class_without_test_images_has_no_accuracy():
    matrix = stats.confusion(np.array([0, 0]), np.array([0, 1]), 3)
    assert np.isnan(stats.per_class_accuracy(matrix)[2])


def test_only_rows_with_throughput_and_latency_are_plotted():
    bench = benchmarks.Bench("serve", "now", "cpu", {}, [], [
        {"model": "a", "batch": 8, "images_per_s": 100.0, "p50_ms": 1.0},
        {"model": "b", "batch": 1, "images_per_s": 50.0},
        {"model": "c", "images_per_s": 10.0, "p99_ms": 9.0, "flag": True}])
    assert benchmarks.plot_points([bench]) == [
        {"label": "serve: a batch=8", "images_per_s": 100.0, "p50_ms": 1.0, "p99_ms": None},
        {"label": "serve: c", "images_per_s": 10.0, "p50_ms": None, "p99_ms": 9.0}]


def test_every_flag_has_help_and_bad_arguments_are_refused(tmp_path, capsys):
    parser = get_args_parser()
    assert not [a.option_strings for a in parser._actions if not a.help]
    assert "(default: None)" not in " ".join(parser.format_help().split())
    assert main(parser.parse_args(["--test-images", "0"])) == 2
    assert main(parser.parse_args(["--near-chance-images", "0"])) == 2
    assert "--near-chance-images must be at least 1, got 0" in capsys.readouterr().err
    assert main(parser.parse_args(["--artifacts", str(tmp_path / "none")])) == 1
    assert "make train" in capsys.readouterr().err
