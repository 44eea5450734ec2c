"""Zero-shot classification: prompt ensembling, ITC logits, ITM re-ranking and accuracy on a
stub model whose features are known; the ImageFolder reader; the synthetic world's one-object
folder; tools/make_object_folder.py and tools/zero_shot.py on the small trained checkpoint."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from albef.data.files import load_image
from albef.data.image_folder import ImageFolderError, class_name, read_image_folder
from albef.data.preprocess import Preprocess
from albef.data.tokenization import build_tokenizer
from albef.inference.zero_shot import ZeroShotClassifier, accuracy, classify_folder, format_prompt, format_result
from albef.modeling.fusion.visual import VisualInput
from albef.modeling.inference import InferenceMixin

from conftest import REPO

# the CLI tests share the session's small trained checkpoint: one xdist worker
pytestmark = pytest.mark.xdist_group("small_checkpoint")

WORDS = ["red", "blue", "circle", "square", "the"]  # feature axes e0..e4 of the stub model


@pytest.fixture()
def preprocess(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "an", *WORDS]) + "\n")
    return _Pre(build_tokenizer(str(vocab)), 5, [0, 0, 0], [1, 1, 1], max_tokens=12)


class _Pre(Preprocess):
    """Images are 1 x 5 PNGs read as raw pixel values [3, 1, 5]: channel R the ITC feature, G the ITM vector."""

    def load(self, image):
        try:
            return torch.from_numpy(np.array(load_image(str(image)))).permute(2, 0, 1).float()
        except OSError as e:
            raise OSError(f"{image}: {e}") from e


class _Stub(InferenceMixin, torch.nn.Module):
    """Text: bag of words over WORDS (states [N, 1, 5], feature = it normalised). Image [B, 3, 1, 5]:
    ITC feature = channel 0 normalised, image tokens = channel 1. ITM match logit = <text bag, image tokens>."""

    temp = 0.5

    def __init__(self, tokenizer):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))  # a device for _device()
        self.table = torch.zeros(len(tokenizer), len(WORDS))
        for j, w in enumerate(WORDS):
            self.table[tokenizer.convert_tokens_to_ids(w), j] = 1.0

    def encode_text(self, ids, mask):
        bag = (self.table[ids] * mask[..., None]).sum(dim=1)  # [N, 5]
        return bag[:, None, :], torch.nn.functional.normalize(bag, dim=-1)

    def encode_image(self, image):
        return image[:, 1, :1, :], torch.nn.functional.normalize(image[:, 0, 0, :], dim=-1)

    def prepare_visual(self, visual):
        return VisualInput.of(visual)

    def fuse(self, text, mask, visual):
        out = torch.zeros(text.shape[0], 1, 2)
        out[:, 0, 1] = (text[:, 0, :] * visual.tokens[0][:, 0, :]).sum(-1)
        return out

    def has_head(self, key):
        return True

    def head(self, key):
        return torch.nn.Identity()


def _e(*axes, w=None):
    v = torch.zeros(len(WORDS))
    for a, x in zip(axes, w or [1.0] * len(axes)):
        v[WORDS.index(a)] = x
    return v


def _image(itc, itm):
    img = torch.zeros(3, 1, len(WORDS))
    img[0, 0], img[1, 0] = itc, itm
    return img


CLASSES = ["red circle", "red square", "blue square"]


# --------------------------------------------------------------------------- the classifier
def test_prompt_templates():
    assert format_prompt("a photo of {a} {}.", "orange square") == "a photo of an orange square."
    assert format_prompt("{a} {}", "red circle") == "a red circle"
    with pytest.raises(ValueError, match="has no '\\{\\}'"):
        format_prompt("a photo", "red circle")
    with pytest.raises(ValueError, match="only '\\{\\}'"):
        format_prompt("{} {colour}", "red circle")


def test_class_embeddings_average_normalised_prompt_features_and_renormalise(preprocess):
    clf = ZeroShotClassifier(_Stub(preprocess.tokenizer), preprocess, CLASSES, ["{}", "the {}"])
    assert clf.prompts == ["red circle", "the red circle", "red square", "the red square", "blue square", "the blue square"]
    # red circle: mean of (e0+e2)/sqrt2 and (e0+e2+e4)/sqrt3, renormalised; the plain mean of the
    # bags (2 e0 + 2 e2 + e4) would give e4/e0 = 0.5 instead of 0.449
    a, b = 1 / math.sqrt(2) + 1 / math.sqrt(3), 1 / math.sqrt(3)
    want = torch.tensor([a, 0, a, 0, b]) / math.sqrt(2 * a * a + b * b)
    assert torch.allclose(clf.class_embeddings[0], want, atol=1e-6)
    assert torch.allclose(clf.class_embeddings.norm(dim=1), torch.ones(3), atol=1e-6)


def test_logits_are_cosines_over_the_temperature_and_ranked(preprocess):
    clf = ZeroShotClassifier(_Stub(preprocess.tokenizer), preprocess, CLASSES, ["{}"])
    images = torch.stack([_image(_e("red", "circle"), 0), _image(_e("blue", "square", w=[1.0, 2.0]), 0)])
    p = clf.predict(images, k=2)
    s = 1 / math.sqrt(2)
    cos0 = torch.tensor([1.0, 0.5, 0.0])  # red circle vs (red circle, red square, blue square)
    u = torch.tensor([1.0, 2.0]) / math.sqrt(5)  # (blue, square) of image 1
    cos1 = torch.tensor([0.0, u[1] * s, (u[0] + u[1]) * s])
    assert torch.allclose(p.logits, torch.stack([cos0, cos1]) / 0.5, atol=1e-6)
    assert torch.allclose(p.probs, (torch.stack([cos0, cos1]) / 0.5).softmax(1), atol=1e-6)
    assert p.topk.tolist() == [[0, 1], [2, 1]] and p.labels == ["red circle", "blue square"]
    assert p.itm_logits is None
    assert clf.predict(images, k=10).topk.shape == (2, 3)  # at most C


@pytest.mark.parametrize("itm_prompts, want", [("mean", [2.0, 3.0]), ("first", [1.0, 2.0])])
def test_itm_reranks_the_top_k_by_itc(preprocess, itm_prompts, want):
    """ITC prefers red circle > red square > blue square; the ITM vector e0 + e3 + 2 e4 prefers
    squares. The "the {}" prompt adds 2 to every ITM logit: the mean over both templates is
    +1, the first template alone +0."""
    model = _Stub(preprocess.tokenizer)
    img = _image(_e("red", "circle", "square", w=[1.0, 1.0, 0.5]), _e("red", "square", "the", w=[1.0, 1.0, 2.0]))[None]
    itc = ZeroShotClassifier(model, preprocess, CLASSES, ["{}", "the {}"]).predict(img)
    assert itc.topk.tolist() == [[0, 1, 2]]
    two = ZeroShotClassifier(model, preprocess, CLASSES, ["{}", "the {}"], rerank_k=2, itm_prompts=itm_prompts).predict(img)
    assert two.topk.tolist() == [[1, 0, 2]]  # red square (ITM 2) over red circle (ITM 1); blue square not re-ranked
    assert two.itm_logits[0, :2].tolist() == pytest.approx([want[0], want[1]]) and math.isnan(two.itm_logits[0, 2])
    assert torch.equal(two.logits, itc.logits)  # the logits stay ITC's
    three = ZeroShotClassifier(model, preprocess, CLASSES, ["{}", "the {}"], rerank_k=3, itm_prompts=itm_prompts).predict(img)
    # blue square ties red circle by ITM (1 each): the tie keeps ITC order
    assert three.topk.tolist() == [[1, 0, 2]]
    assert not torch.isnan(three.itm_logits).any()
    with pytest.raises(ValueError, match="rerank_k must be"):
        ZeroShotClassifier(model, preprocess, CLASSES, rerank_k=-1)


def test_reranking_is_per_image_in_one_batch(preprocess):
    """Two images in one batch with opposite ITM preferences get their own orders."""
    model = _Stub(preprocess.tokenizer)
    itc = _e("red", "circle", "square", w=[1.0, 1.0, 0.5])
    images = torch.stack([_image(itc, _e("square")), _image(itc, _e("circle"))])
    p = ZeroShotClassifier(model, preprocess, CLASSES, ["{}"], rerank_k=2).predict(images, k=1)
    assert p.topk.tolist() == [[1], [0]]


def test_accuracy_by_hand():
    topk = torch.tensor([[0, 1, 2, 3, 4, 5], [1, 0, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [2, 1, 0, 3, 4, 5]])
    labels = torch.tensor([0, 0, 0, 2])
    top1, top5, per = accuracy(topk, labels, 6)
    assert top1 == 50.0 and top5 == 75.0  # image 2 has class 0 only at rank 6
    assert per[0] == (3, pytest.approx(100 / 3)) and per[2] == (1, 100.0) and per[1] == (0, None)


# --------------------------------------------------------------------------- the folder
def _png(path, itc, itm=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    px = np.zeros((1, len(WORDS), 3), dtype=np.uint8)
    px[0, :, 0] = itc.numpy().astype(np.uint8)
    if itm is not None:
        px[0, :, 1] = itm.numpy().astype(np.uint8)
    Image.fromarray(px).save(path)


def test_image_folder_reader(tmp_path):
    for bad, msg in [(tmp_path / "nope", "no such directory"), (tmp_path, "no class folders")]:
        with pytest.raises(ImageFolderError, match=msg):
            read_image_folder(bad)
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ImageFolderError, match="not a directory"):
        read_image_folder(tmp_path / "f.txt")
    (tmp_path / "red_circle").mkdir()
    (tmp_path / "red_circle" / "notes.txt").write_text("not an image")
    with pytest.raises(ImageFolderError, match="no image files"):
        read_image_folder(tmp_path)
    _png(str(tmp_path / "red_circle" / "b.png"), _e("red"))
    _png(str(tmp_path / "red_circle" / "a.PNG"), _e("red"))
    _png(str(tmp_path / "blue_square" / "x.png"), _e("blue"))
    (tmp_path / "green_square").mkdir()  # no images: still a class
    (tmp_path / ".hidden").mkdir()
    f = read_image_folder(tmp_path)
    assert f.class_names == ["blue square", "green square", "red circle"] and f.folders == ["blue_square", "green_square", "red_circle"]
    assert [os.path.relpath(p, tmp_path) for p in f.paths] == ["blue_square/x.png", "red_circle/a.PNG", "red_circle/b.png"]
    assert f.labels.tolist() == [0, 2, 2]
    (tmp_path / "red circle").mkdir()
    with pytest.raises(ImageFolderError, match="name the same class"):
        read_image_folder(tmp_path)
    assert class_name("dark__red_circle") == "dark red circle"


def test_classify_folder_skips_unreadable_files_and_scores(preprocess, tmp_path, caplog):
    # red circle: two right, one read as red square; red square: right; blue square: an unreadable file
    _png(str(tmp_path / "red_circle" / "0.png"), _e("red", "circle", w=[9, 9]))
    _png(str(tmp_path / "red_circle" / "1.png"), _e("red", "circle", w=[9, 8]))
    _png(str(tmp_path / "red_circle" / "2.png"), _e("red", "square", w=[9, 9]))
    _png(str(tmp_path / "red_square" / "0.png"), _e("red", "square", w=[9, 9]))
    os.makedirs(tmp_path / "blue_square")
    (tmp_path / "blue_square" / "broken.jpg").write_bytes(b"not a jpeg")
    folder = read_image_folder(tmp_path)
    clf = ZeroShotClassifier(_Stub(preprocess.tokenizer), preprocess, folder.class_names, ["{}"])
    done = []
    with caplog.at_level("WARNING"):
        res = classify_folder(clf, folder, batch_size=2, progress=done.append)
    assert done == [2, 4, 5]
    assert res.skipped and res.skipped[0][0].endswith("broken.jpg") and "broken.jpg" in caplog.text
    assert res.n == 4 and res.top1 == 75.0 and res.top5 == 100.0
    assert res.chance_top1 == pytest.approx(100 / 3) and res.chance_top5 == 100.0
    assert [(c.name, c.n, c.top1) for c in res.per_class] == [("blue square", 0, None), ("red circle", 3, pytest.approx(200 / 3)), ("red square", 1, 100.0)]
    table = format_result(res)
    assert "top-1 75.00 %" in table and re.search(r"^blue square\s+0\s+-$", table, re.M)
    d = res.to_dict()
    assert d["num_classes"] == 3 and len(d["predictions"]) == 4 and d["skipped"][0]["image"].endswith("broken.jpg")
    with pytest.raises(ValueError, match="not the folder's"):
        classify_folder(ZeroShotClassifier(clf.model, preprocess, ["red circle"], ["{}"]), folder)


# --------------------------------------------------------------------------- the synthetic benchmark
@pytest.mark.slow
def test_object_folder_of_the_test_split(small_checkpoint, tmp_path):
    from albef.data.synthetic.object_folder import make_object_folder

    _, world = small_checkpoint
    out = tmp_path / "objects"
    info = make_object_folder(world, out)
    with open(os.path.join(world, "test.json")) as f:
        test = json.load(f)
    with open(os.path.join(world, "manifest.json")) as f:
        m = json.load(f)
    assert info["classes"] == [f"{c}_{s}" for c in m["colors"] for s in m["shapes"]]
    assert info["images"] == 2 * len(test) == sum(info["counts"].values())
    folder = read_image_folder(out)
    assert len(folder.class_names) == len(m["colors"]) * len(m["shapes"])
    for i, e in enumerate(test):
        words = e["caption"][0].split()  # "a red circle left of a blue square" / "... above ..."
        objs = [(words[1], words[2]), (words[-2], words[-1])]
        orig = np.asarray(Image.open(os.path.join(world, e["image"])).convert("RGB")).astype(int)
        near = {c: np.abs(orig - np.array(m["colors"][c])).sum(-1) < 90 for c, _ in objs}  # each object's core pixels
        for k, (c, s) in enumerate(objs):
            kept = np.asarray(Image.open(out / f"{c}_{s}" / f"{i:06d}_{k}.png")).astype(int)
            assert (np.abs(kept - orig).sum(-1) > 0).any()  # something was erased
            other = objs[1 - k][0]
            if other != c:  # told apart by colour: the kept object untouched, nothing of the other left
                assert near[c].sum() > 20 and (kept[near[c]] == orig[near[c]]).all()
                assert near[other].sum() > 20 and not (np.abs(kept - np.array(m["colors"][other])).sum(-1) < 90).any()
    with pytest.raises(ValueError, match="exists and is not empty"):
        make_object_folder(world, out)
    # a world whose image is not this renderer's picture is refused (its boxes would be unknown)
    fake = tmp_path / "fake"
    shutil.copytree(world, fake, ignore=shutil.ignore_patterns("pretrain.json", "train", "grounding"))
    Image.open(fake / test[0]["image"]).save(fake / test[0]["image"], quality=50)
    with pytest.raises(ValueError, match=re.escape(test[0]["image"]) + ".*not the render"):
        make_object_folder(fake, tmp_path / "fake_objects")


def _tool(name, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", name), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.mark.slow
def test_zero_shot_cli_agrees_with_the_library(small_checkpoint, tmp_path):
    import albef

    ckpt, world = small_checkpoint
    vocab = os.path.join(world, "vocab.txt")  # the checkpoint's own (moved when ALBEF_TEST_SMALL_CHECKPOINT is set)
    folder_dir = str(tmp_path / "objects")
    r = _tool("make_object_folder.py", "--world", world, "--out", folder_dir)
    assert r.returncode == 0, r.stderr
    first = sorted(os.listdir(os.path.join(folder_dir, "green_square")))[0]
    bad = os.path.join(folder_dir, "green_square", "zz_broken.png")
    with open(bad, "wb") as f:
        f.write(b"\x89PNG not really")
    out = str(tmp_path / "res.json")
    templates = ["{a} {}", "a picture of {a} {}"]
    r = _tool("zero_shot.py", "--model", ckpt, "--images", folder_dir, "--templates", *templates, "--rerank-k", "3",
              "--batch-size", "5", "--tokenizer", vocab, "--out", out)
    assert r.returncode == 0, r.stderr
    m = re.search(r"^top-1 ([\d.]+) %  top-5 ([\d.]+) %  chance ([\d.]+) % / ([\d.]+) %  \((\d+) images, (\d+) classes\)$", r.stdout, re.M)
    assert m, r.stdout
    top1, top5, chance1, _, n, C = float(m[1]), float(m[2]), float(m[3]), float(m[4]), int(m[5]), int(m[6])
    rows = re.findall(r"^([a-z]+ [a-z]+)\s+(\d+)\s+([\d.]+|-)$", r.stdout, re.M)
    assert len(rows) == C == 15 and chance1 == pytest.approx(100 / 15, abs=0.01)
    assert "zz_broken.png" in r.stdout and first  # named, not fatal
    assert sum(int(k) for _, k, _ in rows) == n
    # the same inputs through the library
    model, pre = albef.load(ckpt, device="cpu", tokenizer=vocab)
    folder = read_image_folder(folder_dir)
    res = classify_folder(ZeroShotClassifier(model, pre, folder.class_names, templates, rerank_k=3), folder, batch_size=5)
    assert res.n == n == len(folder) - 1 and [p for p, _ in res.skipped] == [bad]
    assert top1 == pytest.approx(res.top1, abs=0.005) and top5 == pytest.approx(res.top5, abs=0.005)
    assert [(name, int(k)) for name, k, _ in rows] == [(c.name, c.n) for c in res.per_class]
    with open(out) as f:
        saved = json.load(f)
    assert saved["top1"] == pytest.approx(res.top1) and saved["rerank_k"] == 3 and saved["templates"] == templates
    assert [p["top1"] for p in saved["predictions"]] == [folder.class_names[i] for i in res.predictions.tolist()]


@pytest.mark.slow
def test_zero_shot_cli_errors(small_checkpoint, tmp_path):
    ckpt, _ = small_checkpoint
    (tmp_path / "empty").mkdir()
    (tmp_path / "noimg" / "red_circle").mkdir(parents=True)
    r = _tool("zero_shot.py", "--model", ckpt, "--images", str(tmp_path / "missing"))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "no such directory" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    # the other folder errors take the same path through the CLI (read_image_folder raises, main prints one line)
    from albef.data.image_folder import ImageFolderError, read_image_folder

    for images, msg in [(tmp_path / "empty", "no class folders"), (tmp_path / "noimg", "no image files")]:
        with pytest.raises(ImageFolderError, match=msg):
            read_image_folder(str(images))
    r = _tool("make_object_folder.py", "--world", str(tmp_path / "empty"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "no manifest.json" in r.stderr
