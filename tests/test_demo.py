"""The browser demo (tools/demo.py, albef/demo/): the functions behind the page, its error
messages, the CLI's refusal of a bad model, and the page itself in headless Chromium on the
suite's small trained checkpoint (plus its API route through gradio_client)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from albef.demo.examples import folder_examples, probe_texts, wrong_colour_caption
from albef.demo.overlay import heat_overlay, jet
from albef.demo.predictor import SCORE_COLUMNS, DemoInputError, DemoPredictor, parse_texts

pytestmark = pytest.mark.xdist_group("small_checkpoint")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
COLOURS = ["red", "green", "blue", "yellow", "purple"]


# ---------------------------------------------------------------------------- pure functions
def test_probe_texts_wrong_colours_and_relation_flip():
    cap = "a green square left of a yellow triangle"
    # the first unused colours, in order; each colour of the caption replaced
    assert wrong_colour_caption(cap, COLOURS) == "a red square left of a blue triangle"
    assert wrong_colour_caption("an orange circle", ["orange", "red"]) == "a red circle"  # the article follows
    assert wrong_colour_caption("a circle above a square", COLOURS) is None
    assert probe_texts(cap, COLOURS) == [cap, "a red square left of a blue triangle", "a green square right of a yellow triangle"]
    assert probe_texts("a red circle above a blue square", COLOURS)[2] == "a red circle below a blue square"
    assert probe_texts("a red circle", COLOURS) == ["a red circle", "a green circle"]  # no relation to flip


def test_parse_texts():
    assert parse_texts("  a red   circle \n\n a blue square\n") == ["a red circle", "a blue square"]
    for empty in ("", "\n  \n", None):
        with pytest.raises(DemoInputError, match="at least one text"):
            parse_texts(empty)


def test_heat_overlay_draws_heat_where_the_map_is_hot():
    assert np.allclose(jet(np.array([0.0, 0.5, 1.0])), [[0, 0, 0.5], [0.5, 1, 0.5], [0.5, 0, 0]])
    img = Image.new("RGB", (40, 40), (128, 128, 128))
    heat = torch.zeros(4, 4)
    heat[:2] = 1.0  # the top half is hot
    out = np.asarray(heat_overlay(img, heat)).astype(int)
    assert out.shape == (40, 40, 3)
    assert out[2, 20, 0] - out[2, 20, 2] > 100  # hot: towards jet's red end
    assert np.abs(out[38, 20] - 128).max() < 30  # cold: nearly the image (opacity grows with the heat)


def test_folder_examples(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "b.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    (tmp_path / "notes.txt").write_text("x")
    assert [os.path.basename(e.image) for e in folder_examples(str(tmp_path))] == ["a.jpg", "b.png"]
    (tmp_path / "test.json").write_text(json.dumps([{"image": "b.png", "caption": ["a red circle"]}, {"image": "gone.png", "caption": "x"}]))
    ex = folder_examples(str(tmp_path))
    assert len(ex) == 1 and ex[0].captions == ["a red circle"]
    with pytest.raises(ValueError, match="not a folder"):
        folder_examples(str(tmp_path / "nope"))


def _stub_predictor(heads=("itm", "mlm")):
    """A predictor over a stand-in model: the error paths are decided before any tensor is computed."""
    model = SimpleNamespace(fusion=SimpleNamespace(layer=[None, None]), heads=dict.fromkeys(heads), config={},
                            has_head=lambda h: h in heads, parameters=lambda: iter([torch.zeros(1)]), source="stub.pth")
    pre = SimpleNamespace(image_res=64, answer_list=None)
    return DemoPredictor(model, pre)


def test_error_paths_are_messages_not_tracebacks():
    from albef.demo.app import on_classify, on_gradcam, on_scores, on_vqa

    pred = _stub_predictor()
    img = Image.new("RGB", (64, 64))
    with pytest.warns(UserWarning, match="Upload an image"):
        table, status = on_scores(pred, None, "a red circle")
    assert status.startswith("**Error:**") and list(table.columns) == list(SCORE_COLUMNS) and len(table) == 0
    with pytest.warns(UserWarning, match="at least one text"):
        _, status = on_scores(pred, img, " \n ")
    assert "at least one text" in status
    assert on_gradcam(pred, None, "a red circle", 1, 0) == ([], "")  # scoring already warned
    with pytest.warns(UserWarning, match="pick a Grad-CAM line 1..1"):
        items, status = on_gradcam(pred, img, "a red circle", 3, 0)
    assert items == [] and "got 3" in status
    with pytest.warns(UserWarning, match="layer must be 0..1"):
        on_gradcam(pred, img, "a red circle", 1, 5)
    with pytest.warns(UserWarning, match=r"model\.heads\.answer"):
        answer, _, status = on_vqa(pred, img, "what colour is the circle?")
    assert answer == "" and "configs/vqa/synthetic.yaml" in status and "itm, mlm" in status
    with pytest.warns(UserWarning, match=r"model\.heads\.cls"):
        _, status = on_classify(pred, img, "there is a red circle")
    assert "configs/ve/synthetic.yaml" in status
    with pytest.raises(DemoInputError, match="Enter a question"):
        _stub_predictor(("answer",)).answer(img, "  ")
    with pytest.raises(DemoInputError, match="--index"):
        pred.search("a red circle")
    with pytest.raises(DemoInputError, match="layer must be 0..1"):
        DemoPredictor(pred.model, pred.preprocess, gradcam_layer=2)


@pytest.mark.slow
def test_cli_refuses_a_missing_model_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "tools/demo.py", "--model", str(tmp_path / "none.pth"), "--port", "1"], cwd=REPO,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --model") and "none.pth" in lines[0] and "Traceback" not in r.stderr


# ---------------------------------------------------------------------------- on the small checkpoint
def _world_example(world):
    with open(os.path.join(world, "test.json"), encoding="utf-8") as f:
        rec = json.load(f)[0]
    with open(os.path.join(world, "manifest.json"), encoding="utf-8") as f:
        colours = list(json.load(f)["colors"])
    return os.path.join(world, rec["image"]), probe_texts(rec["caption"][0], colours)


@pytest.mark.slow
def test_predictor_on_the_small_checkpoint(small_checkpoint):
    import albef
    from albef.demo.app import build_app, on_scores

    ckpt, world = small_checkpoint
    model, pre = albef.load(ckpt, device="cpu", tokenizer=os.path.join(world, "vocab.txt"))
    pred = DemoPredictor(model, pre)
    image_path, texts = _world_example(world)
    image = Image.open(image_path).convert("RGB")
    table, status = on_scores(pred, image, "\n".join(texts))
    s = model.match(pre.image(image), pre.text(texts))  # the page shows the model's own numbers
    assert table["text"].tolist() == texts
    assert np.allclose(table["ITM match probability"], s.itm_probability[0].numpy(), atol=1e-4)
    assert np.allclose(table["ITC similarity"], s.similarity[0].numpy(), atol=1e-4)
    assert status.startswith("Scored 3")
    items, text, score = pred.word_overlays(image, "\n".join(texts), 1)
    assert text == texts[0] and [label for _, label in items] == ["sentence"] + texts[0].split()
    assert items[0][0].size == (192, 192) and abs(score - float(s.itm_probability[0, 0])) < 1e-3
    for head in ("answer", "cls"):  # this checkpoint has neither: messages, not errors
        assert not model.has_head(head)
    with pytest.raises(DemoInputError, match=r"model\.heads\.answer"):
        pred.answer(image, "what colour is the square?")
    app = build_app(pred, folder_examples(world))  # the page builds (not served here)
    assert app.title == "ALBEF demo"


@pytest.mark.slow
def test_search_tab_function_over_an_index(small_checkpoint, tmp_path):
    import albef
    from albef.demo.app import on_search
    from albef.inference.index import ImageIndex

    ckpt, world = small_checkpoint
    model, pre = albef.load(ckpt, device="cpu", tokenizer=os.path.join(world, "vocab.txt"))
    image_dir = os.path.join(world, "images", "test")
    built = ImageIndex.build(model, pre, image_dir, str(tmp_path / "index"), progress=False)
    pred = DemoPredictor(model, pre, index=ImageIndex.load(str(tmp_path / "index")))
    image_path, texts = _world_example(world)
    hits, status = on_search(pred, texts[0], 3)
    assert len(hits) == 3 and status.startswith("3 image(s)")
    # the hits are the index's ITC ranking of this query, computed here by hand
    feats = model.extract_features(pre.image(sorted(os.path.join(image_dir, f) for f in os.listdir(image_dir))), None, "image").image_feat
    sims = feats @ model.extract_features(None, pre.text([texts[0]]), "text").text_feat[0]
    best = [sorted(os.listdir(image_dir))[i] for i in sims.argsort(descending=True)[:3].tolist()]
    assert [os.path.basename(p) for p, _ in hits] == best and built.total == 6
    reranked, _ = on_search(pred, texts[0], 2, True)
    assert len(reranked) == 2 and all("ITM" in label for _, label in reranked)
    with pytest.warns(UserWarning, match="Enter a text"):
        assert on_search(pred, "  ", 3)[0] == []


def _need_browser():
    have = os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)
    try:
        import selenium  # noqa: F401
    except ImportError:
        have = False
    if not have:
        why = f"needs {CHROMIUM}, {CHROMEDRIVER} (apt-get install chromium chromium-driver) and selenium"
        if os.environ.get("ALBEF_CI") == "1":
            pytest.fail(f"CI must run the browser test: {why}")
        pytest.skip(why)


@pytest.mark.slow
def test_demo_in_headless_chromium(small_checkpoint, tmp_path):
    _need_browser()
    from gradio_client import Client, handle_file

    from projects.demo.browser import chromium, free_port, score_in_page, start_demo, stop, wait_until_served

    ckpt, world = small_checkpoint
    image, texts = _world_example(world)
    true, wrong_colour, flipped = texts
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = tmp_path / "demo.log"
    proc = start_demo(ckpt, port, ["--examples", world, "--tokenizer", os.path.join(world, "vocab.txt")], log_path=str(log))
    driver = None
    try:
        try:
            wait_until_served(url, proc)
        except RuntimeError as e:
            pytest.fail(f"{e}\n{log.read_text()[-3000:]}")
        driver = chromium()
        table = score_in_page(driver, url, image, texts)
        driver.save_screenshot(str(tmp_path / "demo.png"))
        assert set(table) == set(texts), table
        itm = {t: float(row["ITM match probability"]) for t, row in table.items()}
        assert itm[true] > itm[wrong_colour], itm  # this checkpoint binds colours
        assert 0.0 <= itm[flipped] <= 1.0  # shown; whether left/right is told apart is not asserted
        assert all(-1.0 <= float(row["ITC similarity"]) <= 1.0 for row in table.values())
        assert Image.open(tmp_path / "demo.png").size[0] > 0

        result, status = Client(url, verbose=False).predict(handle_file(image), "\n".join(texts), api_name="/scores")
        assert status.startswith("Scored 3")
        api = {row[0]: float(row[3]) for row in result["data"]}
        assert list(result["headers"]) == list(SCORE_COLUMNS)
        assert api.keys() == itm.keys() and all(abs(api[t] - itm[t]) < 1e-3 for t in texts), (api, itm)
    finally:
        if driver is not None:
            driver.quit()
        stop(proc)
