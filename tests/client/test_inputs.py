"""Inputs that cannot be used are named, one line each, and the rest are still classified; the
exit status is then 2 (the module docstring of client/predict.py), so a script can tell."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from harness.process import ServerProcess
from server.dataplane import imagefile
from server.dataplane.types import Limits
from server.errors import DecodeError
from tests.client.predict_cli import one_line_error, predict, requests_by_code, serving
from tests.serving_fixtures import SAMPLES

GOOD = ("ankle_boot.png", "bag.png", "coat.png", "dress.png", "sandal.png", "trouser.png")


@pytest.fixture
def folder(tmp_path) -> Path:
    """Six sample images: with 4 images per request (CLIENT_LIMITS), two requests."""
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in GOOD:
        shutil.copy(SAMPLES / name, mixed / name)
    return mixed


def results_and_errors(out) -> tuple[dict, list[tuple[str, str]]]:
    """--json's results by file name, and the stderr lines as (file, reason)."""
    answer = json.loads(out.stdout)
    lines = [line.removeprefix("error: ").split(": ", 1) for line in out.stderr.splitlines()]
    assert [e["file"] for e in answer["errors"]] == [file for file, _ in lines]
    assert [e["error"] for e in answer["errors"]] == [reason for _, reason in lines]
    return {Path(r["file"]).name: r["predictions"] for r in answer["results"]}, lines


def test_files_the_server_cannot_decode_are_named_and_the_rest_classified(address, folder):
    clean = predict(str(folder), "--json", "--top-k", "3", "--server", address)
    assert clean.returncode == 0, clean.stderr
    expected, _ = results_and_errors(clean)
    (folder / "b_notes.png").write_text("not an image\n")  # in the first request
    (folder / "zz.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # the last, a bad header
    out = predict(str(folder), "--json", "--top-k", "3", "--server", address)
    assert out.returncode == 2, out.stderr
    results, errors = results_and_errors(out)
    assert results == expected
    assert [file for file, _ in errors] == [str(folder / "b_notes.png"), str(folder / "zz.png")]
    assert errors[0][1].startswith("not a PNG, JPEG, BMP, GIF or WebP image")
    assert "Traceback" not in out.stderr


def server_says(data: bytes) -> str:
    """The server's own reason for refusing `data` as an image (its decoder, in process)."""
    with pytest.raises(DecodeError) as refused:
        imagefile.open_header(data)
    return str(refused.value)


def test_files_that_are_no_images_cost_no_request(models_dir, folder):
    """Three files that are no image by their first bytes among six samples, 4 images per
    request: the six go in two requests, as they would alone, and the server refuses none (it
    used to be sent each bad file, refuse its whole request, and be sent the rest again). Every
    format the server decodes still goes: the samples as JPEG, BMP, GIF and WebP."""
    bad = {"a_notes.png": b"not an image\n", "c_empty.png": b"",
           "e_page.jpg": b"<!DOCTYPE html><html>"}
    for name, data in bad.items():
        (folder / name).write_bytes(data)
    for suffix in ("jpg", "bmp", "gif", "webp"):
        Image.open(SAMPLES / "bag.png").save(folder / f"bag_as.{suffix}")
    with ServerProcess("--models-dir", str(models_dir), "--port", "0", "--device", "cpu",
                       "--max-images-per-request", "4", metrics=True) as server:
        out = predict(str(folder), "--json", "--model", "lenet_bn",
                      "--server", f"127.0.0.1:{server.wait_for_port()}")
        codes = requests_by_code(server.metrics_port)
    assert out.returncode == 2, out.stderr
    results, errors = results_and_errors(out)
    assert sorted(results) == sorted([*GOOD, *(f"bag_as.{s}" for s in ("jpg", "bmp", "gif",
                                                                         "webp"))])
    assert errors == [[str(folder / name), server_says(data)] for name, data in bad.items()]
    assert codes == {"OK": 3}  # ten images, four per request


def test_human_output_shows_the_results_and_one_line_per_unusable_file(address, folder):
    (folder / "zz.png").write_text("hello")
    out = predict(str(folder), "--server", address)
    assert out.returncode == 2
    assert [line.split(":")[0] for line in out.stdout.splitlines()] == [
        str(folder / name) for name in GOOD]
    one_line_error(out, 2, f"{folder / 'zz.png'}: not a PNG")


def test_unreadable_files_and_folders_are_named_and_the_rest_classified(address, folder,
                                                                        tmp_path):
    """chmod 000; root reads anything, so as root the client runs without the capabilities that
    let it (setpriv, util-linux)."""
    secret = folder / "c_secret.png"
    shutil.copy(SAMPLES / "shirt.png", secret)
    secret.chmod(0)
    locked = tmp_path / "locked"
    locked.mkdir()
    shutil.copy(SAMPLES / "shirt.png", locked / "shirt.png")
    locked.chmod(0)
    prefix = ()
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot make a file unreadable")
        prefix = ("setpriv", "--bounding-set=-dac_override,-dac_read_search")
    try:
        out = predict(str(locked), str(folder), "--json", "--server", address, prefix=prefix)
    finally:
        locked.chmod(0o755)  # so that pytest can remove it
    results, errors = results_and_errors(out)
    assert out.returncode == 2
    assert sorted(results) == sorted(GOOD)
    assert errors == [[str(locked), "cannot read it (Permission denied)"],
                      [str(secret), "cannot read it (Permission denied)"]]


def test_a_file_gone_after_the_folder_was_listed_is_named(address, folder):
    """A link whose file was deleted: listed with the folder, gone when read (as a file deleted
    between the two would be)."""
    gone = folder / "d_gone.png"
    gone.symlink_to(folder / "deleted.png")
    out = predict(str(folder), "--json", "--server", address)
    results, errors = results_and_errors(out)
    assert out.returncode == 2
    assert sorted(results) == sorted(GOOD)
    assert errors == [[str(gone), "no such file (gone since its folder was listed?)"]]


def test_a_missing_path_and_an_empty_folder_among_good_ones(address, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    out = predict(str(tmp_path / "nope.png"), str(SAMPLES / "bag.png"), str(tmp_path / "empty"),
                  "--json", "--server", address)
    results, errors = results_and_errors(out)
    assert out.returncode == 2
    assert list(results) == ["bag.png"]
    assert errors == [[str(tmp_path / "nope.png"), "no such file or folder"],
                      [str(tmp_path / "empty"), "no image files (.png .jpg .jpeg .bmp .gif .webp) "
                                                "in this folder"]]


def test_a_file_over_the_message_size_is_named_and_the_rest_classified(address, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * (2 << 20))  # CLIENT_LIMITS: 1 MiB a message
    out = predict(str(big), str(SAMPLES / "bag.png"), "--json", "--server", address)
    results, errors = results_and_errors(out)
    assert out.returncode == 2
    assert list(results) == ["bag.png"]
    assert errors == [[str(big), "2,097,160 bytes is over what the server accepts in one message "
                                 "(1,048,576 bytes)"]]


def test_nothing_usable_is_one_line_and_exit_2(address, tmp_path):
    one_line_error(predict(str(tmp_path / "nope.png"), "--server", address), 2,
                   f"{tmp_path / 'nope.png'}: no such file or folder")
    (tmp_path / "notes.txt").write_text("hi")
    one_line_error(predict(str(tmp_path), "--server", address), 2,
                   f"{tmp_path}: no image files (.png .jpg .jpeg .bmp .gif .webp) in this folder")
    one_line_error(predict("--server", address), 2, "give image files or folders, or --list")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    out = predict(str(bad), "--server", address)
    one_line_error(out, 2, f"{bad}: not a PNG")
    assert out.stdout == ""


def test_a_batch_over_the_servers_pixels_per_request_is_sent_in_smaller_requests(models_dir):
    """The server takes at most 3 sample images' pixels per request (28 x 28 each), the client
    sends 4 per request (the server's image count limit): each refused request is split, and every
    image is classified as it is alone."""
    limits = Limits(max_images_per_request=4, max_request_pixels=3 * 28 * 28)
    with serving(models_dir, limits=limits) as srv:
        address = f"127.0.0.1:{srv.port}"
        out = predict(str(SAMPLES), "--json", "--model", "lenet_bn", "--server", address)
        alone = {name: predict(str(SAMPLES / name), "--json", "--model", "lenet_bn",
                               "--server", address) for name in sorted(os.listdir(SAMPLES))
                 if name.endswith(".png")}
    assert out.returncode == 0, out.stderr
    results, _ = results_and_errors(out)
    assert results == {name: json.loads(one.stdout)["results"][0]["predictions"]
                       for name, one in alone.items()}
    assert len(results) == 10
