"""Image search: the backends (exact, faiss flat / IVF), the index format and its resumable
build, and the CLIs tools/index_images.py and tools/search.py end to end on the small checkpoint."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from albef.data.preprocess import Preprocess
from albef.inference.index import EMBEDDINGS, META, Hit, ImageIndex, IndexFormatError, list_images, read_texts
from albef.inference.vector_search import ExactSearch, FaissSearch, make_backend, recall_at_k, require_faiss
from albef.modeling.inference import Features
from conftest import REPO

pytestmark = pytest.mark.xdist_group("small_checkpoint")


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


# --------------------------------------------------------------------------- backends
def test_exact_topk_hand_computed():
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
    # scores by hand: q0 -> [1, 0, .6]; q1 -> [0, 1, .8]; q2 -> [.8, .6, .96]
    s = ExactSearch(vectors, query_batch=2)  # two query batches: the batching must not change the result
    scores, ids = s.search(queries, 2)
    assert ids.tolist() == [[0, 2], [1, 2], [2, 0]]
    assert torch.allclose(scores, torch.tensor([[1.0, 0.6], [1.0, 0.8], [0.96, 0.8]]))
    scores, ids = s.search(queries[:1], 10)  # k above N: all N, best first
    assert ids.tolist() == [[0, 2, 1]] and torch.allclose(scores, torch.tensor([[1.0, 0.6, 0.0]]))
    with pytest.raises(ValueError, match="dimension 3"):
        s.search(torch.zeros(1, 3), 1)


def test_recall_at_k_hand_computed():
    exact = torch.tensor([[0, 1, 2], [3, 4, 5]])
    approx = torch.tensor([[2, 1, 9], [5, 4, 3]])  # 2 of 3, 3 of 3
    assert recall_at_k(approx, exact) == pytest.approx(5 / 6)


def test_faiss_flat_equals_exact():
    v, q = _unit(500, 16, 0), _unit(20, 16, 1)
    es, ei = ExactSearch(v).search(q, 10)
    fs, fi = make_backend(v, "faiss-flat").search(q, 10)
    assert torch.equal(fi, ei)
    assert torch.allclose(fs, es, atol=1e-5)


def test_faiss_ivf_recall_full_and_partial_nprobe():
    v, q = _unit(2000, 16, 2), _unit(50, 16, 3)
    _, ei = ExactSearch(v).search(q, 10)
    ivf = FaissSearch(v, "ivf")
    assert ivf.nlist == round(2000 ** 0.5)
    ivf.set_nprobe(ivf.nlist)  # every list visited: exhaustive
    s, i = ivf.search(q, 10)
    assert recall_at_k(i, ei) >= 0.99
    assert torch.all(s[:, :-1] >= s[:, 1:])  # best first
    ivf.set_nprobe(1)
    s1, i1 = ivf.search(q, 10)
    assert ((i1 >= 0) & (i1 < 2000) | (i1 == -1)).all()
    assert torch.isinf(s1[i1 < 0]).all()
    assert recall_at_k(i1, ei) <= recall_at_k(i, ei)


def test_missing_faiss_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'albef\[search\]'"):
        require_faiss()
    with pytest.raises(ImportError, match="albef"):
        make_backend(_unit(4, 2, 0), "faiss-flat")
    with pytest.raises(ValueError, match="backend must be one of"):
        make_backend(_unit(4, 2, 0), "annoy")


# --------------------------------------------------------------------------- the index, with a stand-in model
class PixelModel(torch.nn.Module):
    """A stand-in with the one method the index build calls: normalised random projections of the pixels."""

    embed_dim = 8
    source = "pixel-model"

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3 * 8 * 8, 8)
        self.calls = 0

    @torch.no_grad()
    def extract_features(self, image=None, text=None, mode="multimodal"):
        assert mode == "image"
        self.calls += 1
        return Features(image_feat=torch.nn.functional.normalize(self.proj(image.flatten(1)), dim=1))


@pytest.fixture()
def folder(tmp_path):
    """11 images (2 in a subfolder), a broken .jpg and a non-image file."""
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"{i:02d}.png" for i in range(9)] + ["sub/a.jpg", "sub/b.jpg"]
    for n in names:
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / n)
    (root / "sub" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "notes.txt").write_text("not an image")
    return str(root)


def _build(folder, out, **kw):
    torch.manual_seed(0)
    model = PixelModel()
    pre = Preprocess(None, 8, [0.5] * 3, [0.5] * 3)
    return model, ImageIndex.build(model, pre, folder, str(out), batch_size=2, chunk_batches=2, progress=False, **kw)


def test_list_images_recursive_sorted(folder):
    files = list_images(folder)
    assert files == sorted(files) and len(files) == 12
    assert "sub/broken.jpg" in files and "notes.txt" not in files


def test_resume_equals_one_pass_and_unreadable_file_named(folder, tmp_path):
    model, one = _build(folder, tmp_path / "one")
    assert one.complete and one.total == 12 and one.encoded == 11
    assert [f for f, _ in one.skipped] == ["sub/broken.jpg"] and "unreadable image" in one.skipped[0][1]
    meta = json.load(open(tmp_path / "one" / META))
    assert meta["skipped"] == [{"file": "sub/broken.jpg", "reason": one.skipped[0][1]}]
    assert meta["num_images"] == 11 and "sub/broken.jpg" not in meta["files"]

    _, part = _build(folder, tmp_path / "two", stop_after_chunks=1)  # a chunk is 2 batches of 2 images
    assert not part.complete and part.encoded == 4
    with pytest.raises(IndexFormatError, match="unfinished build"):
        ImageIndex.load(str(tmp_path / "two"))
    model2, rest = _build(folder, tmp_path / "two")
    assert rest.complete and rest.encoded == 7  # continued: the first chunk was not encoded again
    assert model2.calls == 4  # batches 3..6 of 6
    a, b = ImageIndex.load(str(tmp_path / "one")), ImageIndex.load(str(tmp_path / "two"))
    assert a.files == b.files and torch.equal(a.image_feat, b.image_feat)
    assert not os.path.exists(tmp_path / "two" / "parts")

    model3, again = _build(folder, tmp_path / "two")  # finished and unchanged: nothing to do
    assert again.complete and again.encoded == 0 and model3.calls == 0
    _, fresh = _build(folder, tmp_path / "two", resume=False)
    assert fresh.encoded == 11


def test_index_search_and_hits(folder, tmp_path):
    _build(folder, tmp_path / "ix")
    ix = ImageIndex.load(str(tmp_path / "ix"))
    q = ix.image_feat[[3, 7]]
    scores, ids = ix.search(q, 3)
    assert ids[:, 0].tolist() == [3, 7] and torch.allclose(scores[:, 0], torch.ones(2))
    hits = ix._hits(scores[0], ids[0], "images")
    assert isinstance(hits[0], Hit) and hits[0].rank == 1 and hits[0].path == os.path.join(folder, ix.files[3])
    with pytest.raises(ValueError, match="no indexed texts"):
        ix.search(q, 3, target="texts")
    with pytest.raises(ValueError, match=r"\[Q, 8\]"):
        ix.search(torch.zeros(1, 4), 3)


def test_load_checks_name_the_file(folder, tmp_path):
    _build(folder, tmp_path / "ix")
    meta_path = tmp_path / "ix" / META
    meta = json.load(open(meta_path))
    meta["files"] = meta["files"][:-1]
    json.dump(meta, open(meta_path, "w"))
    with pytest.raises(IndexFormatError, match=r"embeddings\.safetensors: image_feat has 11 rows, .*index\.json lists 10 files"):
        ImageIndex.load(str(tmp_path / "ix"))
    meta["files"], meta["embed_dim"] = meta["files"] + ["x.png"], 16
    json.dump(meta, open(meta_path, "w"))
    with pytest.raises(IndexFormatError, match="dimension 8, .*embed_dim 16"):
        ImageIndex.load(str(tmp_path / "ix"))
    os.remove(tmp_path / "ix" / EMBEDDINGS)
    with pytest.raises(IndexFormatError, match="embeddings.safetensors: not found"):
        ImageIndex.load(str(tmp_path / "ix"))
    with pytest.raises(IndexFormatError, match="not an image index"):
        ImageIndex.load(str(tmp_path))


def test_model_of_another_dimension_refused(folder, tmp_path):
    _build(folder, tmp_path / "ix")
    ix = ImageIndex.load(str(tmp_path / "ix"))
    other = PixelModel()
    other.embed_dim = 32
    with pytest.raises(IndexFormatError, match="8-d features .* gives 32-d"):
        ix.check_model(other)


def test_read_texts(tmp_path):
    (tmp_path / "c.txt").write_text("a red circle\n\n a blue square \n")
    assert read_texts(str(tmp_path / "c.txt")) == ["a red circle", "a blue square"]
    (tmp_path / "c.json").write_text('["x", 3]')
    with pytest.raises(ValueError, match="c.json: expected a JSON list of strings"):
        read_texts(str(tmp_path / "c.json"))


# --------------------------------------------------------------------------- the CLIs, on the small checkpoint
def _tool(name: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", name), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)


ROW = re.compile(r"^\s*(\d+)\s+(-?[\d.]+)\s+(?:([\d.]+)\s+)?(.+)$")


def _hits(stdout: str) -> list[list[tuple[int, float, float | None, str]]]:
    """The printed tables: one list of (rank, score, itm or None, hit) per table."""
    tables = []
    for line in stdout.splitlines():
        if line.startswith("rank"):
            tables.append([])
            itm_col = "itm" in line
        elif tables and (m := ROW.match(line)):
            if itm_col:
                tables[-1].append((int(m[1]), float(m[2]), float(m[3]), m[4]))
            else:  # no ITM column: a caption's first word is not a number
                r, s, rest = line.split(None, 2)
                tables[-1].append((int(r), float(s), None, rest))
    return tables


def test_bad_index_path_one_line_exit_2(tmp_path):
    r = _tool("search.py", "--index", str(tmp_path / "nowhere"), "a red circle")
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error:") and "nowhere" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _tool("index_images.py", "--model", "x.pth", "--images", str(tmp_path / "none"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and r.stderr.strip() == f"error: --images {tmp_path / 'none'}: not a directory"


@pytest.mark.slow
def test_cli_index_resume_and_search(small_checkpoint, tmp_path):
    import albef

    ckpt, world = small_checkpoint
    test = json.load(open(os.path.join(world, "test.json")))
    images = tmp_path / "images"
    images.mkdir()
    for a in test:
        shutil.copy(os.path.join(world, a["image"]), images / os.path.basename(a["image"]))
    (images / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    captions = [a["caption"][0] for a in test]
    (tmp_path / "caps.txt").write_text("\n".join(captions) + "\n")
    common = ["--model", ckpt, "--images", str(images), "--texts", str(tmp_path / "caps.txt"), "--batch-size", "2",
              "--chunk-batches", "1"]

    # resumable: stopped after the first chunk, then the same command again, equals one pass (in-process here)
    r = _tool("index_images.py", *common, "--out", str(tmp_path / "ix"), "--stop-after-chunks", "1")
    assert r.returncode == 0 and "run the same command again" in r.stdout, r.stderr
    r = _tool("index_images.py", *common, "--out", str(tmp_path / "ix"))
    assert r.returncode == 0, r.stderr
    assert "skipped broken.jpg: unreadable image" in r.stdout
    assert "img/s" in r.stderr  # the progress bar's rate
    n = len(test)
    assert f"{n - 2} encoded in this run" in r.stdout  # the first chunk (000000.jpg, 000001.jpg) was not redone
    model, pre = albef.load(ckpt, device="cpu")
    one = ImageIndex.build(model, pre, str(images), str(tmp_path / "one"), 2, texts=captions, chunk_batches=1, progress=False).index
    ix = ImageIndex.load(str(tmp_path / "ix"))
    assert ix.files == one.files == [os.path.basename(a["image"]) for a in test]
    assert torch.equal(ix.image_feat, one.image_feat) and torch.equal(ix.text_feat, one.text_feat)
    assert ix.model_name == os.path.abspath(ckpt) and ix.meta["skipped"][0]["file"] == "broken.jpg"

    paths = [str(images / f) for f in ix.files]
    sim = model.similarity(pre.image(paths), pre.text(captions))  # [N_i, N_t]

    # text -> image, image -> texts, image -> images: the printed orders and scores are the direct ITC similarities'
    r = _tool("search.py", "--index", str(tmp_path / "ix"), captions[0], "--image", paths[1], "--k", str(n))
    assert r.returncode == 0, r.stderr
    t2i, i2t, i2i = _hits(r.stdout)
    order = torch.argsort(sim[:, 0], descending=True).tolist()
    assert [h[3] for h in t2i] == [paths[i] for i in order]
    assert np.allclose([h[1] for h in t2i], sim[order, 0].tolist(), atol=1e-3)
    # (where the caption's own image lands is the model's quality, not the tool's: the order above is pinned)
    assert [h[3] for h in i2t] == [captions[i] for i in torch.argsort(sim[1], descending=True).tolist()]
    assert i2i[0][3] == paths[1] and i2i[0][1] == pytest.approx(1.0, abs=1e-3)  # itself, cosine 1

    # --rerank itm (faiss-flat candidates): the ITC pool re-sorted by model.match's ITM probability
    r = _tool("search.py", "--index", str(tmp_path / "ix"), captions[0], "--image", paths[1], "--target", "texts",
              "--k", "3", "--pool", str(n), "--rerank", "itm", "--backend", "faiss-flat")
    assert r.returncode == 0, r.stderr
    t2i, i2t = _hits(r.stdout)
    itm = model.match(pre.image(paths), pre.text(captions)).itm_probability  # [N_i, N_t]
    best = torch.argsort(itm[:, 0], descending=True)[:3].tolist()
    assert [h[3] for h in t2i] == [paths[i] for i in best]
    assert np.allclose([h[2] for h in t2i], itm[best, 0].tolist(), atol=1e-3)
    best = torch.argsort(itm[1], descending=True)[:3].tolist()
    assert [h[3] for h in i2t] == [captions[i] for i in best]
    assert np.allclose([h[2] for h in i2t], itm[1, best].tolist(), atol=1e-3)
