"""Plots and images in prompts: image parts on the wire, sizes, tokens, refusals, storage."""

from __future__ import annotations

import base64
import io
import re
import sqlite3
from pathlib import Path

import httpx
import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from mirai_magics.calllog import read_calls
from mirai_magics.errors import MiraiError, ReplayMissError, UsageError
from mirai_magics.images import TOKEN, decode_data_url, header_size, to_image
from mirai_magics.replay import Replay
from mirai_magics.tokens import image_tokens
from mirai_magics.ui.cell import CellRequest
from mirai_magics.ui.interpolate import interpolate

matplotlib.use("Agg")

KEY = "sk-test-images-0123456789abcdef"
README = Path(__file__).resolve().parent.parent / "README.md"
NO_MEMORY = "context: {rag: {enabled: false}}\n"


def readme_block(name: str) -> str:
    """The ```python block after ``<!-- test-script: NAME -->`` in the README."""
    text = README.read_text(encoding="utf-8")
    found = re.search(rf"<!-- test-script: {name} -->\n```python\n(.*?)\n```\n", text, re.S)
    assert found, f"README has no test-script {name!r}"
    return found.group(1)


def figure(width_in: float = 4, height_in: float = 3) -> Figure:
    fig = Figure(figsize=(width_in, height_in), dpi=100)
    fig.add_subplot().plot([1, 2, 3], [1, 4, 9])
    return fig


def png(width: int, height: int, color: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


def ask(session, text: str, namespace: dict, profile: str = "main", **fields):
    """A `%%mirai` cell's path: interpolated, prepared, sent; returns (prepared, reply)."""
    request = CellRequest(text, profile, "markdown", {}, **fields)
    filled = interpolate(text, namespace).text
    prepared = session.prepare(filled, request)
    reply = session.chat(prepared.messages, prepared.profile, **prepared.send_kwargs())
    return prepared, reply


def sent_images(server) -> list[tuple[str, int, int, str]]:
    """(format, width, height, detail) of each image part the server last received."""
    parts = server.stats_snapshot()["recent"][-1]["body"]["messages"][-1]["content"]
    out = []
    for part in parts:
        if part["type"] == "image_url":
            _data, fmt, width, height = decode_data_url(part["image_url"]["url"])
            out.append((fmt, width, height, part["image_url"]["detail"]))
    return out


def test_a_figure_and_a_pil_image_reach_the_server_as_image_parts_in_order(
    make_session, offline_server
):
    session = make_session(NO_MEMORY)
    ns = {"fig": figure(), "img": Image.new("RGB", (2000, 1000), "blue"), "city": "Oslo"}
    prepared, reply = ask(session, "Plot {fig} of {city} and photo {img}, compare.", ns)
    body = offline_server.stats_snapshot()["recent"][-1]["body"]
    parts = body["messages"][-1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "text", "image_url", "text"]
    assert parts[0]["text"] == "Plot " and parts[2]["text"] == " of Oslo and photo "
    assert sent_images(offline_server) == [("png", 400, 300, "auto"), ("png", 1024, 512, "auto")]
    assert "Images: 2 images: png 400×300 (auto), png 1024×512 (auto)" in reply.text
    assert "2 images" in prepared.flags


def test_max_side_is_configurable_and_numpy_bytes_and_files_are_images(
    make_session, offline_server, tmp_path
):
    session = make_session(NO_MEMORY + "context: {image_max_side: 256, rag: {enabled: false}}")
    array = np.zeros((600, 300, 3), dtype=np.uint8)
    path = tmp_path / "photo.png"
    path.write_bytes(png(100, 50))
    ns = {"arr": array, "raw": png(1000, 1000), "data": np.zeros((4, 4))}
    prepared, _reply = ask(session, "{arr} {raw} {data}", ns, images=[str(path)], detail="low")
    assert sent_images(offline_server) == [
        ("png", 128, 256, "low"),
        ("png", 256, 256, "low"),
        ("png", 100, 50, "low"),
    ]
    text = [p["text"] for p in sent_messages(offline_server) if p["type"] == "text"]
    assert "[[0. 0. 0. 0.]" in " ".join(text)  # a 2-D array is data: interpolated as text
    assert "3 images" in prepared.flags


def sent_messages(server) -> list[dict]:
    return server.stats_snapshot()["recent"][-1]["body"]["messages"][-1]["content"]


def test_a_missing_or_non_image_file_is_one_line(make_session, tmp_path):
    session = make_session(NO_MEMORY)
    (tmp_path / "notes.txt").write_text("not an image")
    for name, why in (("missing.png", "check the path"), ("notes.txt", "is not a PNG or JPEG")):
        request = CellRequest("Describe it.", "main", "markdown", {}, images=[str(tmp_path / name)])
        with pytest.raises(UsageError, match=why) as caught:
            session.prepare("Describe it.", request)
        assert "\n" not in str(caught.value)


def test_a_non_vision_profile_refuses_before_sending_and_auto_routes_to_vision(
    make_session, offline_server
):
    session = make_session(NO_MEMORY)
    ns = {"fig": figure()}
    with pytest.raises(UsageError) as caught:
        ask(session, "What does {fig} show?", ns, profile="fast")
    assert str(caught.value).startswith(
        "profile 'fast' (gpt-3.5-turbo) takes no images — use a vision profile (main, heavy"
    )
    assert "\n" not in str(caught.value) and "fast" not in str(caught.value).split("(main")[1]
    assert offline_server.stats_snapshot().by_path.get("/v1/chat/completions", 0) == 0
    prepared, reply = ask(session, "What does {fig} show?", ns, profile="auto")
    assert prepared.profile == "main" and reply.record.profile == "main"
    assert "auto → main (images need vision)" in prepared.flags


def test_token_estimate_follows_the_tile_rule(make_session, offline_server):
    assert image_tokens(4096, 4096, "low") == 85
    assert image_tokens(1024, 1024, "high") == 85 + 170 * 4  # 768×768: 2×2 tiles
    assert image_tokens(2048, 4096, "auto") == 85 + 170 * 6  # 1024×2048 → 768×1536: 2×3
    assert image_tokens(400, 300, "high") == 85 + 170  # small: one tile, never scaled up
    session = make_session(NO_MEMORY)
    plain, _ = ask(session, "Describe", {}, history=False)
    high, reply = ask(session, "Describe{x}", {"x": png(1024, 1024)}, history=False)
    low, _ = ask(session, "Describe{x}", {"x": png(1024, 1024)}, history=False, detail="low")
    assert high.prompt_tokens - plain.prompt_tokens == 765
    assert low.prompt_tokens - plain.prompt_tokens == 85
    assert reply.record.tokens_in is not None and reply.record.tokens_in > 765  # server's count


def test_history_keeps_a_placeholder_and_the_call_log_a_hash(make_session, isolated_home):
    session = make_session(NO_MEMORY)
    image = png(800, 600)
    prepared, reply = ask(session, "What is in {img}?", {"img": image})
    session.history.append_turn(prepared.user_text, reply.text)
    assert session.history.window()[0]["content"] == "What is in [image 800×600]?"
    session.flush_logs()
    raw = (isolated_home / "calls.sqlite").read_bytes()
    encoded = base64.b64encode(image).decode()
    assert encoded[:40].encode() not in raw and b"base64," not in raw
    row = read_calls(isolated_home / "calls.sqlite", 1)[0]
    stored = row["messages"][-1]["content"][1]["image_url"]["url"]
    assert stored == f"[image sha256:{to_image(image).sha256} 800×600]"


def test_replay_matches_on_the_image_hash(make_session, offline_server, monkeypatch, tmp_path):
    cassette = tmp_path / "images.cassette.sqlite"
    monkeypatch.setenv("MIRAI_RECORD", str(cassette))
    recorder = make_session(NO_MEMORY)
    _, recorded = ask(recorder, "Describe {img}", {"img": png(64, 32)}, history=False)
    recorder.close()
    monkeypatch.delenv("MIRAI_RECORD")
    with sqlite3.connect(cassette) as conn:
        assert b"base64," not in b"".join(
            r[0].encode() for r in conn.execute("SELECT messages FROM calls")
        )
    player = make_session(NO_MEMORY)
    player.set_replay(Replay(cassette))
    sent = offline_server.stats_snapshot().requests
    _, again = ask(player, "Describe {img}", {"img": png(64, 32)}, history=False)
    assert again.text == recorded.text and again.record.replayed
    assert offline_server.stats_snapshot().requests == sent
    with pytest.raises(ReplayMissError, match="this prompt was never recorded"):
        ask(player, "Describe {img}", {"img": png(64, 32, "green")}, history=False)


def test_the_server_checks_images_and_does_not_fetch_urls(offline_server):
    def post(url: str) -> httpx.Response:
        part = {"type": "image_url", "image_url": {"url": url}}
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": [part]}]}
        headers = {"Authorization": f"Bearer {KEY}"}
        return httpx.post(f"{offline_server.url}/chat/completions", json=body, headers=headers)

    ok = post("https://example.invalid/cat.png")  # never fetched: the host does not exist
    assert ok.status_code == 200
    assert "Images: 1 image: url (auto)" in ok.json()["choices"][0]["message"]["content"]
    for url in ("data:image/png;base64,bm90IGFuIGltYWdl", "data:image/png;base64,%%%"):
        bad = post(url)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_image"
    jpeg = io.BytesIO()
    Image.new("RGB", (30, 20)).save(jpeg, format="JPEG")
    assert header_size(jpeg.getvalue()) == ("jpeg", 30, 20)
    url = "data:image/jpeg;base64," + base64.b64encode(jpeg.getvalue()).decode()
    assert "jpeg 30×20 (auto)" in post(url).json()["choices"][0]["message"]["content"]


def test_interpolation_marks_images_and_keeps_the_rest_text():
    result = interpolate("a {fig} b {n} c {{fig}}", {"fig": figure(), "n": 3})
    assert result.text.images and len(result.text.images) == 1
    assert result.text == f"a {TOKEN.format(0)} b 3 c {{fig}}"
    assert result.text.references == (("n", "3"),)


SHOW_PNG = """
import io
from IPython.display import Image, display
from PIL import Image as Pil
buffer = io.BytesIO()
Pil.new("RGB", ({w}, {h}), "red").save(buffer, format="PNG")
{how}
"""


@pytest.mark.kernel
def test_out_and_disp_of_a_cell_that_showed_a_png_in_a_real_kernel(tmp_path, offline_server):
    from kernelutil import Kernel, server_kernel_env

    env = server_kernel_env(offline_server.url, tmp_path, NO_MEMORY, KEY)
    with Kernel(tmp_path, env) as kernel:
        kernel.run("%load_ext mirai_magics")
        shown = kernel.run(SHOW_PNG.format(w=320, h=200, how="Image(data=buffer.getvalue())"))
        assert shown.data("image/png")
        n = int(kernel.run("print(len(In) - 2)").text)
        asked = kernel.run(f"%%mirai --no-history --detail low\nDescribe {{Out[{n}]}} briefly.")
        assert sent_images(offline_server) == [("png", 320, 200, "low")]
        assert "1 image" in [t for t in asked.data("text/plain") if "[mirai]" in t][-1]
        kernel.run(SHOW_PNG.format(w=64, h=48, how="display(Image(data=buffer.getvalue()))"))
        m = int(kernel.run("print(len(In) - 2)").text)
        path = tmp_path / "extra.png"
        path.write_bytes(png(30, 10))
        kernel.run(f"%%mirai --no-history --image {path}\nCompare {{Disp[{m}]}} with the file.")
        assert sent_images(offline_server) == [("png", 64, 48, "auto"), ("png", 30, 10, "auto")]
        refused = kernel.run(f"%%mirai fast --no-history\nDescribe {{Disp[{m}]}}")
        assert "takes no images" in refused.text
        kernel.run(readme_block("plot"))  # the README's plot and cell
        cell = "%%mirai --detail low\nWhat trend does {fig} show?"
        assert f"```\n{cell}\n```" in README.read_text(encoding="utf-8")
        answer = kernel.run(cell).text
        assert sent_images(offline_server) == [("png", 400, 300, "low")]
        assert "Images: 1 image: png 400×300 (low)" in answer


def test_a_fallback_never_sends_images_to_a_model_without_vision(make_session, offline_server):
    session = make_session(NO_MEMORY)
    offline_server.set_faults(force_status=429)  # main fails; its fallback would be fast
    with pytest.raises(MiraiError):
        ask(session, "Describe {img}", {"img": png(20, 20)}, history=False)
    models = offline_server.stats_snapshot().by_model
    assert models.get("gpt-4o-mini", 0) >= 1 and "gpt-3.5-turbo" not in models
    offline_server.set_faults(force_status=None)
    reply = session.chat("no image here")  # text alone still falls back as before
    assert reply.record.profile == "main"


def test_the_jsonl_log_keeps_an_image_as_its_placeholder():
    from mirai_magics.client.records import CallRecord
    from mirai_magics.telemetry.logs import call_fields

    url = "data:image/png;base64," + base64.b64encode(png(40, 30)).decode()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
            ],
        }
    ]
    record = CallRecord(profile="main", model="gpt-4o-mini")
    line = call_fields(record, [], 0.0, messages, "a red box", include_prompts=True)
    logged = str(line["prompt"])
    assert url[30:80] not in logged and re.search(r"\[image sha256:[0-9a-f]{64} 40×30\]", logged)
    assert "what is this?" in logged


def test_a_broken_or_unsupported_image_is_one_line(tmp_path):
    from mirai_magics.vision import cell_images

    gif = tmp_path / "x.gif"
    gif.write_bytes(b"GIF89a" + b"\0" * 20)
    from IPython.display import Image as Shown

    no_data = Shown(url="http://127.0.0.1:9/never-fetched.png")  # an IPython image, no bytes
    for value, request in (
        (interpolate("{u}", {"u": no_data}).text, None),
        ("", CellRequest("", "main", "markdown", {}, images=[str(gif)])),
    ):
        with pytest.raises(UsageError) as info:
            cell_images(value, request, 1024)
        line = str(info.value)
        assert "\n" not in line and ("as an image" in line or "not a PNG or JPEG" in line)
