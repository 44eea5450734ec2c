"""Controlled caption noise for the shapes world's training split (``data.synthetic.noise``).

Web alt-text is a noisy description of its image. This module makes the synthetic
training pairs noisy in four controlled ways, each with its own rate (a fraction of the
training *images*; an image is corrupted by at most one kind, and every caption of a
corrupted image gets that kind of corruption):

``wrong_pair``
    every caption is replaced by the captions of another image whose scene differs
    (the pair is simply wrong);
``clutter``
    alt-text clutter: two words are added, both at the start, both at the end or one at
    each end: words that say nothing about the image ("picture", "paper", "drawn", ...)
    or a stray colour or shape word, as the issue's "a random colour or shape" (such a
    word may happen to name something in the image, as a web tag would); the original
    description stays intact inside;
``partial``
    one of the two objects is left out: the caption is the other object's noun phrase
    alone ("a red circle"), true but incomplete (drawn per caption, so two paraphrases
    of an image may both become the same phrase);
``absent_object``
    one of the two noun phrases is replaced by an object that is not in the image
    ("a red circle left of a green cross" for an image of a red circle and a blue
    square), so the caption names something the image does not show.

The words come from the data set's own vocabulary (the world's colours and shapes and
words the vocabulary already holds), so no caption falls apart into [UNK] pieces and
``vocab.txt`` stays the one of the clean data.

Every corrupted entry keeps its image's ``image_id`` (the scene it shows): the training
pair still *claims* that the caption belongs with that image, as a noisy web pair does,
so ITC treats it as a positive of that image (and of other renders of the same scene)
and a ``wrong_pair`` caption as a negative of the images it actually describes.

The test split is never touched. Which images get which kind is an exact draw: for
rates ``r_k`` and ``N`` images, ``round(r_k * N)`` images of kind ``k``, disjoint, chosen
by a permutation seeded by the data set's seed and ``noise.seed``. The noisy copy of
``pretrain.json`` is written to ``<root>/noisy/<key>/pretrain.json`` beside
``corruptions.json`` (the side file: per corrupted entry its index, kind, the clean
captions, and what was changed) and a ``manifest.json``; the official-format JSON itself
carries nothing extra. Same rates and seeds -> byte-identical files.
"""
from __future__ import annotations

import json
import os
import random
import re
from typing import Any, Mapping

from albef.data.synthetic.generated import build_dir_atomically, check_manifest, is_empty_dir
from albef.data.synthetic.scenes import RELATIONS, _noun_phrase, _phrase

__all__ = ["NOISE_KINDS", "CLUTTER_WORDS", "NoiseError", "noise_key", "make_noisy_pretrain", "parse_noise", "parse_caption", "named_objects"]

NOISE_KINDS: tuple[str, ...] = ("wrong_pair", "clutter", "partial", "absent_object")
#: Clutter words besides the world's colours and shapes: words of the vocabulary that never
#: describe a shapes-world image.
CLUTTER_WORDS: tuple[str, ...] = ("picture", "paper", "drawn", "seen", "the", "one")
NOISE_FORMAT_VERSION = 1

_NP = r"an? (\w+) (\w+)"
# every relation phrase of the world's captions: "left of", "to the left of", "above", ...
_REL = sorted({_phrase(r) for r in RELATIONS} | {f"to the {_phrase(r)}" for r in ("left", "right")}, key=len, reverse=True)
_CAPTION_RE = re.compile(rf"^{_NP} ({'|'.join(_REL)}) {_NP}$")


class NoiseError(ValueError):
    """Bad ``data.synthetic.noise`` settings (named in the message)."""


def parse_noise(node: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Validated noise settings ``{kind: rate, ..., "seed": int}`` with every kind present,
    or None when no kind has a rate above 0 (the clean data)."""
    if node is None:
        return None
    if not isinstance(node, Mapping):
        raise NoiseError(f"data.synthetic.noise must be a mapping {{{', '.join(f'{k}: rate' for k in NOISE_KINDS)}, seed: int}} or null, got {node!r}")
    node = dict(node)
    unknown = sorted(set(node) - set(NOISE_KINDS) - {"seed"})
    if unknown:
        raise NoiseError(f"data.synthetic.noise: unknown key(s) {unknown}; valid keys: {', '.join(NOISE_KINDS + ('seed',))}")
    out: dict[str, Any] = {}
    for k in NOISE_KINDS:
        v = node.get(k, 0.0)
        v = 0.0 if v is None else v
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise NoiseError(f"data.synthetic.noise.{k} must be a number in [0, 1], got {node.get(k)!r}")
        v = float(v)
        if not 0.0 <= v <= 1.0:
            raise NoiseError(f"data.synthetic.noise.{k} must be in [0, 1], got {v}")
        out[k] = v
    total = sum(out[k] for k in NOISE_KINDS)
    if total > 1.0 + 1e-9:
        raise NoiseError(f"data.synthetic.noise: the rates add up to {total:.3f} > 1 (an image gets at most one kind)")
    seed = node.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise NoiseError(f"data.synthetic.noise.seed must be an integer, got {seed!r}")
    out["seed"] = seed
    return out if total > 0 else None


def noise_key(noise: Mapping[str, Any]) -> str:
    """Directory name of a noise setting: ``wrong_pair0.1-clutter0-partial0-absent_object0.05-seed0``."""
    return "-".join(f"{k}{noise[k]:g}" for k in NOISE_KINDS) + f"-seed{noise['seed']}"


def parse_caption(caption: str) -> tuple[tuple[str, str], str, tuple[str, str]] | None:
    """``((colour, shape), relation phrase, (colour, shape))`` of a two-object caption, or None."""
    m = _CAPTION_RE.match(caption)
    if m is None:
        return None
    c1, s1, rel, c2, s2 = m.groups()
    return (c1, s1), rel, (c2, s2)


def named_objects(text: str) -> frozenset | None:
    """The two ``(colour, shape)`` objects a two-object caption names, clutter aside: the
    caption as is, or without up to two words at its ends (where ``clutter`` puts them);
    None for anything else (a one-object caption, another sentence)."""
    words = text.split()
    for start, end in ((0, 0), (2, 0), (0, 2), (1, 1), (1, 0), (0, 1)):
        p = parse_caption(" ".join(words[start:len(words) - end]))
        if p is not None:
            return frozenset((p[0], p[2]))
    return None


def _np(obj: tuple[str, str]) -> str:
    return _noun_phrase(*obj)


def _corrupt(kind: str, caps: list[str], rng: random.Random, colors: list[str], shapes: list[str],
             other_caps: list[str] | None) -> tuple[list[str], dict[str, Any]]:
    """The corrupted captions of one entry and what changed (for the side file)."""
    if kind == "wrong_pair":
        return list(other_caps), {}
    if kind == "clutter":
        vocab = list(CLUTTER_WORDS) + colors + shapes
        out, added = [], []
        for c in caps:
            words = [rng.choice(vocab), rng.choice(vocab)]
            at = rng.choice(["start", "end", "both"])
            if at == "start":
                out.append(f"{words[0]} {words[1]} {c}")
            elif at == "end":
                out.append(f"{c} {words[0]} {words[1]}")
            else:
                out.append(f"{words[0]} {c} {words[1]}")
            added.append(words)
        return out, {"added_words": added}
    parsed = [parse_caption(c) for c in caps]
    if any(p is None for p in parsed):
        bad = caps[[p is None for p in parsed].index(True)]
        raise NoiseError(f"data.synthetic.noise.{kind}: caption {bad!r} is not a two-object shapes-world caption")
    if kind == "partial":
        out, dropped = [], []
        for a, _, b in parsed:
            keep, drop = (a, b) if rng.random() < 0.5 else (b, a)
            out.append(_np(keep))
            dropped.append(_np(drop))
        return out, {"left_out": dropped}
    if kind == "absent_object":
        a, _, b = parsed[0]
        present = {a, b}
        absent = [(c, s) for c in colors for s in shapes if (c, s) not in present]
        new = rng.choice(absent)
        which = rng.randrange(2)  # replace the same object in every paraphrase
        out = []
        for pa, rel, pb in parsed:
            target = (a, b)[which]
            pa, pb = (new if pa == target else pa), (new if pb == target else pb)
            out.append(f"{_np(pa)} {rel} {_np(pb)}")
        return out, {"absent": _np(new), "replaced": _np((a, b)[which])}
    raise NoiseError(f"unknown noise kind {kind!r}; one of {', '.join(NOISE_KINDS)}")


def _scene_key(entry: dict) -> str:
    return str(entry.get("image_id", entry["caption"][0]))


def corrupt_entries(entries: list[dict], noise: Mapping[str, Any], colors: list[str], shapes: list[str], seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(noisy copy of ``entries``, corruption records ``[{index, kind, clean, ...}]``).

    Exactly ``round(rate * len(entries))`` entries of each kind, disjoint, drawn by one
    permutation; a ``wrong_pair`` entry takes the captions of a random entry with another
    scene (``image_id``)."""
    n = len(entries)
    rng = random.Random(f"albef-noise/v{NOISE_FORMAT_VERSION}/{seed}/{noise['seed']}")
    order = list(range(n))
    rng.shuffle(order)
    counts = {k: int(round(noise[k] * n)) for k in NOISE_KINDS}
    if sum(counts.values()) > n:  # rounding up every kind; the rates themselves add up to <= 1
        counts[max(counts, key=counts.get)] -= sum(counts.values()) - n
    out = [dict(e, caption=list(e["caption"])) for e in entries]
    records: list[dict] = []
    start = 0
    for kind in NOISE_KINDS:
        chosen = sorted(order[start:start + counts[kind]])
        start += counts[kind]
        for i in chosen:
            e = entries[i]
            erng = random.Random(f"albef-noise/v{NOISE_FORMAT_VERSION}/{seed}/{noise['seed']}/{kind}/{i}")
            other = None
            if kind == "wrong_pair":
                for _ in range(1000):
                    j = erng.randrange(n)
                    if _scene_key(entries[j]) != _scene_key(e):
                        other = entries[j]
                        break
                if other is None:
                    raise NoiseError("data.synthetic.noise.wrong_pair: every training image shows the same scene")
            caps, info = _corrupt(kind, list(e["caption"]), erng, colors, shapes, None if other is None else list(other["caption"]))
            out[i]["caption"] = caps
            rec = {"index": i, "image": e["image"], "kind": kind, "clean": list(e["caption"]), "noisy": caps, **info}
            if other is not None:
                rec["captions_of"] = other["image"]
            records.append(rec)
    records.sort(key=lambda r: r["index"])
    return out, records


def make_noisy_pretrain(root: str, noise: Mapping[str, Any]) -> dict[str, str]:
    """Write (once) the noisy training annotations of the synthetic data set at ``root``;
    return their paths ``{"pretrain": ..., "corruptions": ..., "dir": ...}``.

    Built atomically into ``<root>/noisy/<noise_key>`` (safe with concurrent callers);
    an existing directory is reused when its manifest matches."""
    with open(os.path.join(root, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    key = noise_key(noise)
    out_dir = os.path.join(root, "noisy", key)
    paths = {"pretrain": os.path.join(out_dir, "pretrain.json"), "corruptions": os.path.join(out_dir, "corruptions.json"), "dir": out_dir}
    params = {"noise": dict(noise), "data_seed": manifest["params"]["seed"], "clean_counts": manifest["counts"]}
    if os.path.exists(out_dir) and not is_empty_dir(out_dir):
        check_manifest(out_dir, "noisy synthetic annotations", NOISE_FORMAT_VERSION, params)
        return paths

    def build(tmp: str) -> None:
        with open(os.path.join(root, "pretrain.json"), encoding="utf-8") as f:
            entries = json.load(f)
        colors, shapes = list(manifest["colors"]), list(manifest["shapes"])
        noisy, records = corrupt_entries(entries, noise, colors, shapes, seed=manifest["params"]["seed"])
        for name, obj in (("pretrain.json", noisy), ("corruptions.json", records)):
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                json.dump(obj, f, indent=1)
                f.write("\n")
        counts = {k: sum(r["kind"] == k for r in records) for k in NOISE_KINDS}
        with open(os.path.join(tmp, "manifest.json"), "w", encoding="utf-8") as f:
            json.dump({"format_version": NOISE_FORMAT_VERSION, "params": params, "corrupted": counts,
                       "train_images": len(entries)}, f, indent=1)
            f.write("\n")

    build_dir_atomically(out_dir, build)
    check_manifest(out_dir, "noisy synthetic annotations", NOISE_FORMAT_VERSION, params)
    return paths
