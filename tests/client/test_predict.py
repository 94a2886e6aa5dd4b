"""client/predict.py: output, batching, exit codes and one-line errors."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from client.predict import ClientError, ImageFile, batches, collect_files
from tests.serving_fixtures import REPO, SAMPLES

PREDICT = REPO / "client" / "predict.py"


def predict(*args: str, script: Path = PREDICT, python_flags=()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *python_flags, str(script), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def one_line_error(out: subprocess.CompletedProcess, rc: int, *needles: str) -> str:
    assert out.returncode == rc, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert "Traceback" not in out.stderr
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_human_output_is_a_table_per_image(address):
    out = predict(str(SAMPLES / "ankle_boot.png"), str(SAMPLES / "bag.png"), "--model", "lenet_bn",
                  "--top-k", "3", "--server", address)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2 * (1 + 1 + 3)
    assert lines[0].startswith(f"{SAMPLES / 'ankle_boot.png'}: ") and lines[0].endswith("[lenet_bn v1]")
    assert lines[1].split() == ["rank", "label", "probability"]
    assert [line.split()[0] for line in lines[2:5]] == ["1", "2", "3"]


def test_json_for_a_folder_is_sorted_batched_and_uses_the_most_accurate_model(address, samples):
    listing = json.loads(predict("--list", "--json", "--server", address).stdout)
    best = max(listing["models"], key=lambda m: m["test_accuracy"])["name"]
    out = predict(str(SAMPLES), "--json", "--top-k", "10", "--server", address)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert (answer["model"], answer["version"], answer["server"]) == (best, 1, address)
    assert [Path(r["file"]).name for r in answer["results"]] == sorted(samples)  # 10 > 4 per request
    for result in answer["results"]:
        probs = [p["probability"] for p in result["predictions"]]
        assert [p["rank"] for p in result["predictions"]] == list(range(1, 11))
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-4)


def test_invert_reaches_the_server(address, tmp_path):
    """coat.png is the dataset's light-on-dark; its negative is dark-on-light. Inverting the
    negative gives back coat.png's exact pixels, so equal answers mean equal inputs: `auto` flips
    only the negative, `always` both, `never` neither. A client that sent one inversion whatever
    --invert said would break at least one of these equalities or differences."""
    dark = SAMPLES / "coat.png"
    light = tmp_path / "coat_negative.png"
    ImageOps.invert(Image.open(dark).convert("L")).save(light)

    def answers(invert: str) -> tuple[list, list]:
        out = predict(str(dark), str(light), "--invert", invert, "--model", "lenet_bn",
                      "--top-k", "10", "--json", "--server", address)
        assert out.returncode == 0, out.stderr
        by_file = {Path(r["file"]).name: r["predictions"] for r in json.loads(out.stdout)["results"]}
        return by_file[dark.name], by_file[light.name]

    auto, always, never = answers("auto"), answers("always"), answers("never")
    original = never[0]
    assert auto == (original, original)
    assert always[1] == original and always[0] != original
    assert never[1] != original


def test_list(address):
    out = predict("--list", "--server", address)
    assert out.returncode == 0
    header, *rows = out.stdout.splitlines()
    assert header.split() == ["model", "version", "variant", "accuracy", "on", "images", "input",
                              "provider", "probe", "|Δ|", "agree", "fp32", "vs", "fp32", "b32"]
    assert [row.split()[0] for row in rows] == ["lenet", "lenet_bn"]
    assert all(row.split()[2] == "fp32" for row in rows)  # variants: tests/server/test_variants.py
    assert all(row.split()[4] == "256" for row in rows)  # the fixture's whole test set
    assert all(row.split()[6] == "CPUExecutionProvider" for row in rows)
    assert all(float(row.split()[7]) <= 1e-3 for row in rows)  # the exporter's probe, re-run here
    assert all(row.split()[8:] == ["-", "-"] for row in rows)  # fp32: no agreement, no speed-up
    listing = json.loads(predict("--list", "--json", "--server", address).stdout)
    assert listing["limits"]["max_images_per_request"] == 4
    assert {m["test_images"] for m in listing["models"]} == {256}
    assert {m["name"] for m in listing["models"]} == {"lenet", "lenet_bn"}
    assert all(0 <= m["probe_max_abs_diff"] <= 1e-3 for m in listing["models"])
    assert listing["refused"] == []


def test_server_down_is_one_line_and_exit_1():
    down = f"127.0.0.1:{free_port()}"
    out = predict(str(SAMPLES / "bag.png"), "--server", down, "--timeout", "10")
    one_line_error(out, 1, f"cannot reach the fmnist server at {down}")
    one_line_error(predict("--list", "--server", down), 1, "cannot reach")


def test_unknown_model_is_one_line_and_exit_1(address):
    out = predict(str(SAMPLES / "bag.png"), "--model", "resnet1000", "--server", address)
    one_line_error(out, 1, "NOT_FOUND", "resnet1000", "lenet_bn")


def test_undecodable_file_is_one_line_and_exit_1(address, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    out = predict(str(SAMPLES / "bag.png"), str(bad), "--server", address)
    one_line_error(out, 1, "INVALID_ARGUMENT", "image 1:")


def test_missing_or_unreadable_files_exit_2(address, tmp_path):
    one_line_error(predict(str(tmp_path / "nope.png"), "--server", address), 2, "no such file")
    (tmp_path / "notes.txt").write_text("hi")
    one_line_error(predict(str(tmp_path), "--server", address), 2, "no image files")
    one_line_error(predict("--server", address), 2, "give image files")


def test_missing_stubs_say_make_install(tmp_path):
    script = tmp_path / "predict.py"  # away from the repo: no build/gen next to it
    shutil.copy(PREDICT, script)
    out = predict("--list", script=script, python_flags=("-S",))  # -S: no site-packages, no .pth
    one_line_error(out, 1, "run `make install`")


# --- pure helpers ----------------------------------------------------------------------------------

def images(*sizes: int) -> list[ImageFile]:
    return [ImageFile(Path(f"{i}.png"), b"x" * n) for i, n in enumerate(sizes)]


def test_batches_respect_image_count_and_message_size():
    assert [len(b) for b in batches(images(*[10] * 10), 4, 1 << 20)] == [4, 4, 2]
    # a budget of ~0.9 * 10000 - 1024 bytes: 3 images of 2500 bytes fit, a 4th does not
    assert [len(b) for b in batches(images(*[2500] * 7), 64, 10_000)] == [3, 3, 1]
    with pytest.raises(ClientError, match="over what the server accepts"):
        list(batches(images(10, 20_000), 64, 10_000))


def test_collect_files_takes_image_files_of_folders_sorted(tmp_path):
    for name in ("b.PNG", "a.jpg", "c.txt", "d.webp"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    assert [p.name for p in collect_files([tmp_path])] == ["a.jpg", "b.PNG", "d.webp"]
    with pytest.raises(ClientError) as e:
        collect_files([tmp_path / "missing"])
    assert e.value.exit_code == 2
