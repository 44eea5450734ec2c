"""An embedding index of a folder of images, for text->image, image->text and image->image search.

    model, preprocess = albef.load("output/synthetic/model_final.pth")
    ImageIndex.build(model, preprocess, "photos/", "photos.index", texts=captions)   # resumable
    index = ImageIndex.load("photos.index")                                          # backend="exact" | "faiss-flat" | "faiss-ivf"
    hits = index.search_text(model, preprocess, ["a red circle left of a blue square"], k=10)[0]
    hits[0].path, hits[0].score

An index is a folder in a safe format (no pickles):

- ``embeddings.safetensors``: ``image_feat`` float32 [N, E], the L2-normalised ITC image
  features of ``model.extract_features(mode="image")``; optionally ``text_feat`` float32
  [T, E], the features of a caption list (so that an image query can retrieve texts).
- ``index.json``: ``files`` (N paths relative to ``image_root``, row i of ``image_feat`` is
  ``files[i]``), ``texts`` (T captions), ``model`` (name, source, embed_dim), counts,
  ``skipped`` (unreadable files and why) and ``format_version``.

A build writes its progress in chunks (``parts/part_NNNNNN.safetensors``, each replaced
atomically, plus ``build.json`` naming the file list and the model): an interrupted build run
again continues after the last finished chunk, and, as chunks are whole batches, gives the same
features as one uninterrupted pass.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from albef.inference.vector_search import BACKENDS, make_backend

logger = logging.getLogger("albef.inference")

FORMAT_VERSION = 1
EMBEDDINGS = "embeddings.safetensors"
META = "index.json"
BUILD_STATE = "build.json"
PARTS = "parts"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
TARGETS = ("images", "texts")


class IndexFormatError(ValueError):
    """An index folder that cannot be used (missing, unfinished, inconsistent); the message names the file."""


@dataclass
class Hit:
    """One search result: ``rank`` (1 = best), ``index`` (its row in the index), ``score`` (ITC
    cosine similarity to the query), ``path`` (an image hit: its file) or ``text`` (a caption
    hit), ``itm_probability`` (the ITM match probability, when re-ranked by ITM)."""

    rank: int
    index: int
    score: float
    path: str | None = None
    text: str | None = None
    itm_probability: float | None = None


@dataclass
class BuildResult:
    """What :meth:`ImageIndex.build` did: ``total`` image files found, ``encoded`` by this call,
    ``skipped`` [(file, reason)] (the whole build's), ``complete`` (False: stopped after
    ``stop_after_chunks``; run again to continue), ``seconds`` spent encoding in this call and
    ``index`` (the loaded index when complete)."""

    total: int
    encoded: int
    skipped: list[tuple[str, str]]
    complete: bool
    seconds: float
    index: "ImageIndex | None" = field(default=None, repr=False)

    @property
    def images_per_second(self) -> float:
        return self.encoded / self.seconds if self.seconds > 0 else float("nan")


def list_images(image_dir: str) -> list[str]:
    """Image files under ``image_dir`` (recursively, by extension), as sorted '/'-separated paths relative to it."""
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"{image_dir}: not a directory")
    out = []
    for dirpath, dirnames, files in os.walk(image_dir):
        dirnames.sort()
        for name in files:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                out.append(os.path.relpath(os.path.join(dirpath, name), image_dir).replace(os.sep, "/"))
    return sorted(out)


def read_texts(path: str) -> list[str]:
    """Captions from a text file (one per line, blank lines dropped) or a JSON list of strings."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: caption file not found")
    with open(path, encoding="utf-8") as f:
        data = f.read()
    if path.endswith(".json"):
        try:
            texts = json.loads(data)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"{path}: expected a JSON list of strings")
    else:
        texts = data.splitlines()
    texts = [t.strip() for t in texts if t.strip()]
    if not texts:
        raise ValueError(f"{path}: no captions in the file")
    return texts


# --------------------------------------------------------------------------- encoding
def _image_feat(model, images: torch.Tensor) -> torch.Tensor:
    f = model.extract_features(images, mode="image").image_feat
    if f is None:
        raise ValueError("this model has no ITC projections (model.embed_dim): it cannot embed images for search")
    return f.float().cpu()


def encode_texts(model, preprocess, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Normalised ITC text features [T, E] of ``texts``, ``batch_size`` at a time."""
    feats = []
    for s in range(0, len(texts), batch_size):
        f = model.extract_features(None, preprocess.text(list(texts[s : s + batch_size])), mode="text").text_feat
        if f is None:
            raise ValueError("this model has no ITC projections (model.embed_dim): it cannot embed texts for search")
        feats.append(f.float().cpu())
    return torch.cat(feats)


class _ImageFiles(Dataset):
    """Item i: (i, image tensor [3, H, W] or None, the reason it could not be read or None)."""

    def __init__(self, root: str, files: Sequence[str], offset: int, preprocess):
        self.root, self.files, self.offset, self.preprocess = root, files, offset, preprocess

    def __len__(self) -> int:
        return max(0, len(self.files) - self.offset)

    def __getitem__(self, i: int):
        j = i + self.offset
        try:
            return j, self.preprocess.load(os.path.join(self.root, self.files[j])), None
        except (OSError, ValueError) as e:
            return j, None, str(e).replace(os.path.join(self.root, self.files[j]) + ": ", "")


def _collate(items):
    ok = [(j, x) for j, x, _ in items if x is not None]
    bad = [(j, r) for j, x, r in items if x is None]
    return [j for j, _ in ok], (torch.stack([x for _, x in ok]) if ok else None), bad


def _atomic_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)  # readers see the old file or the new one, never half of one


def _atomic_safetensors(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tmp = path + ".tmp"
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
    os.replace(tmp, path)


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise IndexFormatError(f"{path}: not valid JSON ({e})") from e


def _model_record(model, model_name: str | None) -> dict[str, Any]:
    name = model_name if model_name is not None else getattr(model, "weights_path", None) or getattr(model, "source", None)
    return {"name": name,
            "source": getattr(model, "source", None), "embed_dim": getattr(model, "embed_dim", None)}


def _build_key(state: dict) -> str:
    """A digest of what a build encodes (its file list, model and texts): a finished index with the
    same key is up to date."""
    blob = json.dumps({k: state[k] for k in ("image_root", "files", "model", "texts")}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def _part_path(out_dir: str, i: int) -> str:
    return os.path.join(out_dir, PARTS, f"part_{i:06d}.safetensors")


def _read_part(path: str) -> tuple[torch.Tensor, list[int], list[tuple[int, str]]]:
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
        feat = f.get_tensor("image_feat")
    return feat, json.loads(meta["rows"]), [tuple(x) for x in json.loads(meta["skipped"])]


# --------------------------------------------------------------------------- the index
class ImageIndex:
    """Image features [N, E] (and optionally caption features [T, E]) with their file list, and a
    search backend over each (built on first use: ``exact``, ``faiss-flat`` or ``faiss-ivf``).

    Args:
        image_feat: [N, E] normalised; ``files``: N paths relative to ``image_root``.
        text_feat: [T, E] normalised or None; ``texts``: the T captions.
        backend: see :mod:`albef.inference.vector_search`; ``nlist`` / ``nprobe``: faiss-ivf's.
    """

    def __init__(self, image_feat: torch.Tensor, files: Sequence[str], image_root: str, *, text_feat: torch.Tensor | None = None,
                 texts: Sequence[str] | None = None, meta: dict[str, Any] | None = None, backend: str = "exact",
                 nlist: int | None = None, nprobe: int | None = None, path: str | None = None):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.image_feat, self.files, self.image_root = image_feat.float(), list(files), image_root
        self.text_feat, self.texts = (None if text_feat is None else text_feat.float()), list(texts or [])
        self.meta, self.backend, self.nlist, self.nprobe, self.path = dict(meta or {}), backend, nlist, nprobe, path
        self._backends: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.files)

    @property
    def embed_dim(self) -> int:
        return int(self.image_feat.shape[1])

    @property
    def model_name(self) -> str | None:
        return (self.meta.get("model") or {}).get("name")

    def _where(self) -> str:
        return os.path.join(self.path, EMBEDDINGS) if self.path else "the index"

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, model, preprocess, image_dir: str, out_dir: str, batch_size: int = 64, resume: bool = True, *,
              texts: Sequence[str] | None = None, model_name: str | None = None, chunk_batches: int = 8,
              num_workers: int = 0, stop_after_chunks: int | None = None, progress: bool = True) -> BuildResult:
        """Encode every image under ``image_dir`` into an index folder ``out_dir``.

        Images are encoded ``batch_size`` at a time by ``model.extract_features(mode="image")``,
        read by a DataLoader (``num_workers`` processes); every ``chunk_batches`` batches the
        features are written to a part file. With ``resume`` (default) an unfinished build of the
        same files and model continues after its last part, and a finished index of them is
        returned as it is; otherwise, or when they differ, the build starts over. Unreadable
        files are skipped and recorded with the reason. ``texts``: captions to index as well.
        ``stop_after_chunks``: write at most that many parts in this call, then return
        (``complete=False``). ``progress``: a tqdm bar (rate, ETA) on stderr.
        """
        if batch_size < 1 or chunk_batches < 1:
            raise ValueError(f"batch_size and chunk_batches must be >= 1, got {batch_size}, {chunk_batches}")
        files = list_images(image_dir)
        if not files:
            raise ValueError(f"{image_dir}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found (searched recursively)")
        texts = list(texts) if texts is not None else []
        chunk = batch_size * chunk_batches  # whole batches: a resumed build encodes exactly the batches of one pass
        root = os.path.abspath(image_dir)
        os.makedirs(out_dir, exist_ok=True)
        state = {"format_version": FORMAT_VERSION, "image_root": root, "files": files, "chunk": chunk,
                 "model": _model_record(model, model_name), "texts": texts}
        meta_path, state_path, parts_dir = (os.path.join(out_dir, n) for n in (META, BUILD_STATE, PARTS))

        if resume and os.path.isfile(meta_path) and not os.path.isfile(state_path):
            try:
                done = cls.load(out_dir)
            except IndexFormatError:
                done = None
            if done is not None and done.meta.get("build_key") == _build_key(state):
                logger.info("%s: up to date (%d images)", out_dir, len(done))
                return BuildResult(len(files), 0, [(s["file"], s["reason"]) for s in done.meta["skipped"]], True, 0.0, done)

        n_parts = (len(files) + chunk - 1) // chunk
        first = 0
        if resume and os.path.isfile(state_path) and _read_json(state_path) == state:
            while first < n_parts and os.path.isfile(_part_path(out_dir, first)):
                first += 1
            if first:
                logger.info("%s: resuming after %d of %d chunks", out_dir, first, n_parts)
        else:
            if os.path.isfile(state_path):
                logger.warning("%s: discarding the progress of an unfinished build of other files or another model", out_dir)
            shutil.rmtree(parts_dir, ignore_errors=True)
            _atomic_json(state_path, state)
        os.makedirs(parts_dir, exist_ok=True)

        start = first * chunk
        loader = DataLoader(_ImageFiles(root, files, start, preprocess), batch_size=batch_size, shuffle=False,
                            num_workers=num_workers, collate_fn=_collate)
        bar = tqdm(total=len(files), initial=start, unit="img", desc="indexing", disable=not progress, dynamic_ncols=True)
        feats, rows, bad = [], [], []
        part, written, encoded, t0 = first, 0, 0, time.perf_counter()
        for j, (ok, images, skipped) in enumerate(loader):
            for i, reason in skipped:
                logger.warning("skipping %s: %s", files[i], reason)
            if images is not None:
                feats.append(_image_feat(model, images))
            rows += ok
            bad += skipped
            encoded += len(ok)
            bar.update(len(ok) + len(skipped))
            if (j + 1) % chunk_batches == 0 or j + 1 == len(loader):
                dim = feats[0].shape[1] if feats else 0
                _atomic_safetensors(_part_path(out_dir, part), {"image_feat": torch.cat(feats) if feats else torch.zeros(0, dim)},
                                    {"rows": json.dumps(rows), "skipped": json.dumps(bad)})
                feats, rows, bad = [], [], []
                part, written = part + 1, written + 1
                if stop_after_chunks is not None and written >= stop_after_chunks and part < n_parts:
                    break
        bar.close()
        seconds = time.perf_counter() - t0
        if part < n_parts:
            return BuildResult(len(files), encoded, cls._skipped_so_far(out_dir, files, part), False, seconds)
        index = cls._finish(model, preprocess, out_dir, state, n_parts)
        return BuildResult(len(files), encoded, [(s["file"], s["reason"]) for s in index.meta["skipped"]], True, seconds, index)

    @staticmethod
    def _skipped_so_far(out_dir: str, files: list[str], n_parts: int) -> list[tuple[str, str]]:
        return [(files[i], r) for p in range(n_parts) for i, r in _read_part(_part_path(out_dir, p))[2]]

    @classmethod
    def _finish(cls, model, preprocess, out_dir: str, state: dict, n_parts: int) -> "ImageIndex":
        files = state["files"]
        feats, rows, bad = [], [], []
        for p in range(n_parts):
            f, r, b = _read_part(_part_path(out_dir, p))
            feats.append(f)
            rows += r
            bad += b
        if not rows:
            raise ValueError(f"{state['image_root']}: none of the {len(files)} image files could be read "
                             f"(first: {files[bad[0][0]]}: {bad[0][1]})")
        dim = max(f.shape[1] for f in feats)
        tensors = {"image_feat": torch.cat([f for f in feats if f.shape[0]])}
        if state["texts"]:
            tensors["text_feat"] = encode_texts(model, preprocess, state["texts"])
        model_rec = dict(state["model"], embed_dim=dim)
        meta = {
            "format_version": FORMAT_VERSION, "image_root": state["image_root"], "model": model_rec, "embed_dim": dim,
            "num_images": len(rows), "num_texts": len(state["texts"]), "num_skipped": len(bad),
            "files": [files[i] for i in rows], "texts": state["texts"],
            "skipped": [{"file": files[i], "reason": r} for i, r in bad],
            "build_key": _build_key(state),
        }
        _atomic_safetensors(os.path.join(out_dir, EMBEDDINGS), tensors, {"format_version": str(FORMAT_VERSION)})
        _atomic_json(os.path.join(out_dir, META), meta)
        os.remove(os.path.join(out_dir, BUILD_STATE))  # only after index.json: a crash before this resumes instead
        shutil.rmtree(os.path.join(out_dir, PARTS), ignore_errors=True)
        return cls.load(out_dir)

    # ------------------------------------------------------------------ load
    @classmethod
    def load(cls, out_dir: str, backend: str = "exact", *, nlist: int | None = None, nprobe: int | None = None) -> "ImageIndex":
        """The index in folder ``out_dir``, checked: index.json and embeddings.safetensors present and of
        this format, the feature rows matching the file and caption lists, the dimension the recorded one."""
        meta_path, emb_path = os.path.join(out_dir, META), os.path.join(out_dir, EMBEDDINGS)
        if not os.path.isdir(out_dir):
            raise IndexFormatError(f"{out_dir}: no such index folder (build one with tools/index_images.py)")
        if not os.path.isfile(meta_path):
            if os.path.isfile(os.path.join(out_dir, BUILD_STATE)):
                raise IndexFormatError(f"{out_dir}: an unfinished build ({BUILD_STATE}, no {META}): run tools/index_images.py "
                                       "again with the same arguments to finish it")
            raise IndexFormatError(f"{meta_path}: not found: {out_dir} is not an image index (build one with tools/index_images.py)")
        meta = _read_json(meta_path)
        if not isinstance(meta, dict):
            raise IndexFormatError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise IndexFormatError(f"{meta_path}: format_version {version!r}; this albef reads version {FORMAT_VERSION}")
        for key, typ in (("files", list), ("texts", list), ("embed_dim", int), ("image_root", str), ("skipped", list)):
            if not isinstance(meta.get(key), typ):
                raise IndexFormatError(f"{meta_path}: key {key!r} missing or not a {typ.__name__}")
        if not os.path.isfile(emb_path):
            raise IndexFormatError(f"{emb_path}: not found (the index folder {out_dir} is incomplete)")
        try:
            with safe_open(emb_path, "pt") as f:
                keys = set(f.keys())
                image_feat = f.get_tensor("image_feat") if "image_feat" in keys else None
                text_feat = f.get_tensor("text_feat") if "text_feat" in keys else None
        except Exception as e:  # safetensors raises its own error types for a damaged header
            raise IndexFormatError(f"{emb_path}: not a readable safetensors file ({e})") from e
        if image_feat is None:
            raise IndexFormatError(f"{emb_path}: no tensor 'image_feat'")

        def check(t: torch.Tensor, name: str, n: int, what: str) -> None:
            if t.dim() != 2 or t.dtype != torch.float32:
                raise IndexFormatError(f"{emb_path}: {name} must be float32 [N, E], got {t.dtype} {tuple(t.shape)}")
            if t.shape[0] != n:
                raise IndexFormatError(f"{emb_path}: {name} has {t.shape[0]} rows, {meta_path} lists {n} {what}")
            if t.shape[1] != meta["embed_dim"]:
                raise IndexFormatError(f"{emb_path}: {name} has dimension {t.shape[1]}, {meta_path} records embed_dim {meta['embed_dim']}")

        check(image_feat, "image_feat", len(meta["files"]), "files")
        if meta["texts"] and text_feat is None:
            raise IndexFormatError(f"{emb_path}: no tensor 'text_feat' for the {len(meta['texts'])} texts of {meta_path}")
        if text_feat is not None:
            check(text_feat, "text_feat", len(meta["texts"]), "texts")
        return cls(image_feat, meta["files"], meta["image_root"], text_feat=text_feat, texts=meta["texts"], meta=meta,
                   backend=backend, nlist=nlist, nprobe=nprobe, path=out_dir)

    # ------------------------------------------------------------------ search
    def _backend(self, target: str):
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        if target not in self._backends:
            vectors = self.image_feat if target == "images" else self.text_feat
            if vectors is None or vectors.shape[0] == 0:
                raise ValueError(f"{self.path or 'this index'} has no indexed texts: build it with texts (tools/index_images.py --texts FILE)")
            self._backends[target] = make_backend(vectors, self.backend, nlist=self.nlist, nprobe=self.nprobe)
        return self._backends[target]

    def search(self, queries: torch.Tensor, k: int = 10, target: str = "images") -> tuple[torch.Tensor, torch.Tensor]:
        """Query features [Q, E] (normalised) -> (scores [Q, k'], ids [Q, k']) over the indexed
        ``images`` or ``texts``, best first; k' = min(k, N); cosine scores. faiss-ivf may return
        id -1 (score -inf) where its visited lists hold fewer than k vectors."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = torch.as_tensor(queries).float()
        if q.dim() != 2 or q.shape[1] != self.embed_dim:
            raise ValueError(f"queries must be [Q, {self.embed_dim}] (the index's embed_dim, {self._where()}), got {tuple(q.shape)}")
        return self._backend(target).search(q.cpu(), k)

    def check_model(self, model) -> None:
        """A model whose features are not of the index's dimension is an error naming both."""
        dim = getattr(model, "embed_dim", None)
        if dim is not None and int(dim) != self.embed_dim:
            raise IndexFormatError(f"{self._where()} holds {self.embed_dim}-d features (model {self.model_name}); the query model "
                                   f"{getattr(model, 'source', '')} gives {dim}-d: search with the model that built the index")

    def _hits(self, scores: torch.Tensor, ids: torch.Tensor, target: str, itm: torch.Tensor | None = None) -> list[Hit]:
        out = []
        for r, (s, i) in enumerate(zip(scores.tolist(), ids.tolist())):
            if i < 0:
                continue
            hit = Hit(rank=len(out) + 1, index=i, score=s, itm_probability=None if itm is None else float(itm[r]))
            if target == "images":
                hit.path = os.path.join(self.image_root, self.files[i])
            else:
                hit.text = self.texts[i]
            out.append(hit)
        return out

    def search_text(self, model, preprocess, texts: str | Sequence[str], k: int = 10, *, rerank: str | None = None,
                    pool: int | None = None) -> list[list[Hit]]:
        """Text -> image: the ``k`` best images of each text (a list of hits per text).
        ``rerank="itm"``: take ``pool`` (default 4k) candidates by ITC, re-score each with the
        ITM match probability of ``model.match`` and keep the best k by it."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        self.check_model(model)
        q = encode_texts(model, preprocess, texts)
        if rerank is None:
            scores, ids = self.search(q, k, "images")
            return [self._hits(s, i, "images") for s, i in zip(scores, ids)]
        _check_rerank(rerank)
        scores, ids = self.search(q, max(k, pool or 4 * k), "images")
        out = []
        for t, s, i in zip(texts, scores, ids):
            s, i = s[i >= 0], i[i >= 0]
            images = preprocess.image([os.path.join(self.image_root, self.files[j]) for j in i.tolist()])
            itm = _itm(model.match(images, preprocess.text([t])))[:, 0]  # [C]
            out.append(self._reranked(s, i, itm, k, "images"))
        return out

    def search_image(self, model, preprocess, images, k: int = 10, target: str = "images", *, rerank: str | None = None,
                     pool: int | None = None) -> list[list[Hit]]:
        """Image -> image (``target="images"``) or image -> text (``"texts"``, the indexed captions):
        the ``k`` best hits of each query image (paths, PIL images or a tensor [B, 3, H, W]).
        ``rerank="itm"`` (texts only): ITM re-scoring of ``pool`` (default 4k) ITC candidates."""
        self.check_model(model)
        x = preprocess.image(images)
        q = _image_feat(model, x)
        if rerank is None:
            scores, ids = self.search(q, k, target)
            return [self._hits(s, i, target) for s, i in zip(scores, ids)]
        _check_rerank(rerank)
        if target != "texts":
            raise ValueError("ITM re-ranking scores (image, text) pairs: use it for text->image or image->text, not image->image")
        scores, ids = self.search(q, max(k, pool or 4 * k), "texts")
        out = []
        for b, (s, i) in enumerate(zip(scores, ids)):
            s, i = s[i >= 0], i[i >= 0]
            itm = _itm(model.match(x[b : b + 1], preprocess.text([self.texts[j] for j in i.tolist()])))[0]  # [C]
            out.append(self._reranked(s, i, itm, k, "texts"))
        return out

    def _reranked(self, scores: torch.Tensor, ids: torch.Tensor, itm: torch.Tensor, k: int, target: str) -> list[Hit]:
        order = torch.argsort(itm.cpu(), descending=True, stable=True)[:k]  # stable: ties keep the ITC order
        return self._hits(scores[order], ids[order], target, itm.cpu()[order])


def _check_rerank(rerank: str) -> None:
    if rerank != "itm":
        raise ValueError(f"rerank must be 'itm' or None, got {rerank!r}")


def _itm(scores) -> torch.Tensor:
    if scores.itm_probability is None:
        raise ValueError("ITM re-ranking needs a model with an ITM head (model.heads.itm)")
    return scores.itm_probability.float()
