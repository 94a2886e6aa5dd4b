"""client/predict.py's output: one line per image for top-1, a table per image for top-k, JSON,
--list, --model, --invert; and its pure helpers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from client import ClientError
from client.classify import batches, fit_messages
from client.inputs import ImageFile, require_images
from tests.client.predict_cli import PREDICT, one_line_error, predict
from tests.serving_fixtures import REPO, SAMPLES


def answer_of(*args: str) -> dict:
    out = predict(*args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_top1_is_one_line_per_image_with_the_labels_aligned(address):
    files = [str(SAMPLES / "ankle_boot.png"), str(SAMPLES / "bag.png")]
    out = predict(*files, "--model", "lenet_bn", "--server", address)
    assert out.returncode == 0, out.stderr
    answer = answer_of(*files, "--model", "lenet_bn", "--server", address)
    lines = out.stdout.splitlines()
    assert len(lines) == len(files)  # no table repeating the line
    label_columns = set()
    for line, file, result in zip(lines, files, answer["results"]):
        best = result["predictions"][0]
        rest = line[len(file) + 1:]
        assert line.startswith(f"{file}:")
        assert rest.lstrip() == f"{best['label']} ({best['probability']:.1%})  [lenet_bn v1]"
        label_columns.add(len(line) - len(rest.lstrip()))
    assert len(label_columns) == 1
    one = predict(files[1], "--model", "lenet_bn", "--server", address)
    best = answer["results"][1]["predictions"][0]
    assert one.stdout == f"{files[1]}: {best['label']} ({best['probability']:.1%})  [lenet_bn v1]\n"


def test_top_k_is_a_heading_and_a_table_per_image(address):
    files = [str(SAMPLES / "ankle_boot.png"), str(SAMPLES / "bag.png")]
    out = predict(*files, "--model", "lenet_bn", "--top-k", "3", "--server", address)
    assert out.returncode == 0, out.stderr
    answer = answer_of(*files, "--model", "lenet_bn", "--top-k", "3", "--server", address)
    lines = out.stdout.splitlines()
    assert len(lines) == len(files) * (1 + 2 + 3)
    for block, file, result in zip((lines[:6], lines[6:]), files, answer["results"]):
        heading, header, rule, *rows = block
        assert heading == f"{file}  [lenet_bn v1]"
        assert header.split() == ["label", "class", "probability"]
        assert set(rule.strip()) <= {"-", " "}
        expected = [(p["label"], str(p["class_id"]), f"{p['probability']:.4f}")
                    for p in result["predictions"]]
        assert [tuple(r.strip().rsplit(maxsplit=2)) for r in rows] == expected


def test_json_for_a_folder_is_sorted_batched_and_uses_the_most_accurate_model(address, samples):
    listing = json.loads(predict("--list", "--json", "--server", address).stdout)
    best = max(listing["models"], key=lambda m: m["test_accuracy"])["name"]
    out = predict(str(SAMPLES), "--json", "--top-k", "10", "--server", address)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert (answer["model"], answer["version"], answer["server"]) == (best, 1, address)
    assert answer["errors"] == []
    assert [Path(r["file"]).name for r in answer["results"]] == sorted(samples)  # 10 > 4 per request
    for result in answer["results"]:
        probs = [p["probability"] for p in result["predictions"]]
        assert [p["rank"] for p in result["predictions"]] == list(range(1, 11))
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-4)


def test_model_picks_the_model_that_answers(address):
    listing = json.loads(predict("--list", "--json", "--server", address).stdout)
    best = max(listing["models"], key=lambda m: m["test_accuracy"])["name"]
    other = next(m["name"] for m in listing["models"] if m["name"] != best)
    answer = answer_of(str(SAMPLES / "bag.png"), "--model", other, "--server", address)
    assert answer["model"] == other
    human = predict(str(SAMPLES / "bag.png"), "--model", other, "--server", address)
    assert human.stdout.rstrip().endswith(f"[{other} v1]")


def test_invert_reaches_the_server(address, tmp_path):
    """coat.png is the dataset's light-on-dark; its negative is dark-on-light. Inverting the
    negative gives back coat.png's exact pixels, so equal answers mean equal inputs: `auto` flips
    only the negative, `always` both, `never` neither. A client that sent one inversion whatever
    --invert said would break at least one of these equalities or differences."""
    dark = SAMPLES / "coat.png"
    light = tmp_path / "coat_negative.png"
    ImageOps.invert(Image.open(dark).convert("L")).save(light)

    def answers(invert: str) -> tuple[list, list]:
        answer = answer_of(str(dark), str(light), "--invert", invert, "--model", "lenet_bn",
                           "--top-k", "10", "--server", address)
        by_file = {Path(r["file"]).name: r["predictions"] for r in answer["results"]}
        return by_file[dark.name], by_file[light.name]

    auto, always, never = answers("auto"), answers("always"), answers("never")
    original = never[0]
    assert auto == (original, original)
    assert always[1] == original and always[0] != original
    assert never[1] != original


def test_list(address):
    out = predict("--list", "--server", address)
    assert out.returncode == 0
    header, rule, *rows = out.stdout.splitlines()
    assert header.split() == ["model", "version", "variant", "accuracy", "on", "images", "input",
                              "provider", "probe", "|Δ|", "agree", "fp32", "vs", "fp32", "b32",
                              "note"]
    assert set(rule) == {"-", " "} and len(rule) == len(header)
    assert [row.split()[0] for row in rows] == ["lenet", "lenet_bn"]
    assert all(row.split()[2] == "fp32" for row in rows)  # variants: tests/server/test_variants.py
    assert all(row.split()[4] == "256" for row in rows)  # the fixture's whole test set
    assert all(row.split()[6] == "CPUExecutionProvider" for row in rows)
    assert all(float(row.split()[7]) <= 1e-3 for row in rows)  # the exporter's probe, re-run here
    assert all(row.split()[8:10] == ["-", "-"] for row in rows)  # fp32: no agreement, no speed-up
    listing = json.loads(predict("--list", "--json", "--server", address).stdout)
    assert listing["limits"]["max_images_per_request"] == 4
    assert {m["test_images"] for m in listing["models"]} == {256}
    assert {m["name"] for m in listing["models"]} == {"lenet", "lenet_bn"}
    assert [f"{m['test_accuracy']:.4f}" for m in listing["models"]] == [r.split()[3] for r in rows]
    assert all(0 <= m["probe_max_abs_diff"] <= 1e-3 for m in listing["models"])
    assert listing["refused"] == []


def test_missing_stubs_say_make_install(tmp_path):
    """The client's own modules in a copy of the repository without build/gen (the stubs)."""
    shutil.copytree(REPO / "client", tmp_path / "client",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("cli_text.py", "model_contract.py"):
        shutil.copy(REPO / name, tmp_path / name)
    out = predict("--list", script=tmp_path / "client" / "predict.py",
                  python_flags=("-S",))  # -S: no site-packages, no .pth
    one_line_error(out, 1, "run `make install`")
    assert PREDICT.read_bytes() == (tmp_path / "client" / "predict.py").read_bytes()


# --- pure helpers ----------------------------------------------------------------------------------

def images(*sizes: int) -> list[ImageFile]:
    return [ImageFile(Path(f"{i}.png"), b"x" * n) for i, n in enumerate(sizes)]


def test_batches_respect_image_count_and_message_size():
    assert [len(b) for b in batches(images(*[10] * 10), 4, 1 << 20)] == [4, 4, 2]
    # a budget of ~0.9 * 10000 - 1024 bytes: 3 images of 2500 bytes fit, a 4th does not
    assert [len(b) for b in batches(images(*[2500] * 7), 64, 10_000)] == [3, 3, 1]
    fitting, too_large = fit_messages(images(10, 20_000, 30), 10_000)
    assert [i.path.name for i in fitting] == ["0.png", "2.png"]
    assert [u.path.name for u in too_large] == ["1.png"]
    assert "over what the server accepts" in too_large[0].reason


def test_require_images_takes_image_files_of_folders_sorted(tmp_path):
    """scripts/demo_classify.py's reader: a folder's image files by name, every one or an error."""
    for name in ("b.PNG", "a.jpg", "c.txt", "d.webp"):
        shutil.copy(SAMPLES / "bag.png", tmp_path / name)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub.png").mkdir()  # a folder named like an image is not one
    assert [i.path.name for i in require_images([tmp_path])] == ["a.jpg", "b.PNG", "d.webp"]
    assert {i.data for i in require_images([tmp_path])} == {(SAMPLES / "bag.png").read_bytes()}
    with pytest.raises(ClientError) as e:
        require_images([tmp_path / "missing"])
    assert e.value.exit_code == 2


def test_help_lists_every_flag_and_the_exit_statuses():
    out = predict("--help")
    assert out.returncode == 0 and out.stderr == ""
    for flag in ("--model", "--variant", "--model-version", "--top-k", "--server", "--timeout",
                 "--invert", "--json", "--tls-ca", "--tls-cert", "--tls-key", "--token", "--list"):
        assert flag in out.stdout
    text = " ".join(out.stdout.split())
    assert "port 50051 when left out" in text
    assert ("Exit status: 0 when every input was classified; 1 when the server or an RPC fails "
            "(one line on stderr); 2 for bad arguments, or when an input could not be used") in text
