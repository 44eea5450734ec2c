"""Learning from noisy pairs: controlled caption noise, per-objective distillation weights,
the teacher's pseudo-target inspection tool, and run_ablation's condition sweeps."""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY, run_cli
from test_objectives import HM, LM, V, _hand_itc, _hand_mlm_logits, _lse, _make_ctx, _mlm_setup, _unit_rows

from albef.config import load_config
from albef.data.build import prepare_synthetic
from albef.data.synthetic.noise import (
    CLUTTER_WORDS,
    NOISE_KINDS,
    corrupt_entries,
    make_noisy_pretrain,
    named_objects,
    noise_key,
    parse_caption,
    parse_noise,
)
from albef.modeling.objectives.itc import ITCLoss
from albef.modeling.objectives.mlm import MLMLoss
from albef.modeling.teachers.base import Teacher
from albef.registry import ComponentError


# its tests share module fixtures (a trained model, generated data): one xdist worker builds them once
pytestmark = pytest.mark.xdist_group("noisy_pairs")


def _load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


RATES = {"wrong_pair": 0.25, "clutter": 0.125, "partial": 0.125, "absent_object": 0.25, "seed": 0}


# --------------------------------------------------------------------------- noise
def test_each_noise_kind_changes_exactly_what_it_says_at_its_rate(synthetic_root):
    clean = _load(os.path.join(synthetic_root, "pretrain.json"))
    manifest = _load(os.path.join(synthetic_root, "manifest.json"))
    colors, shapes = list(manifest["colors"]), list(manifest["shapes"])
    n = len(clean)
    noisy, records = corrupt_entries(clean, parse_noise(RATES), colors, shapes, seed=0)
    assert len(noisy) == n
    by_kind = {k: [r for r in records if r["kind"] == k] for k in NOISE_KINDS}
    for k in NOISE_KINDS:  # exact counts, each image corrupted at most once
        assert len(by_kind[k]) == round(RATES[k] * n), k
    assert len({r["index"] for r in records}) == len(records)
    touched = {r["index"] for r in records}
    for i in range(n):  # untouched entries are unchanged; image and id never change
        assert noisy[i]["image"] == clean[i]["image"] and noisy[i]["image_id"] == clean[i]["image_id"]
        if i not in touched:
            assert noisy[i] == clean[i]
    objects = set((c, s) for c in colors for s in shapes)
    for r in records:
        i, caps, orig = r["index"], noisy[r["index"]]["caption"], clean[r["index"]]["caption"]
        assert r["clean"] == orig and r["noisy"] == caps and caps != orig
        a, _, b = parse_caption(orig[0])
        if r["kind"] == "wrong_pair":  # another image's captions, of another scene: none true of this image
            donor = next(e for e in clean if e["image"] == r["captions_of"])
            assert caps == donor["caption"] and donor["image_id"] != clean[i]["image_id"]
            assert not set(caps) & set(orig)
        elif r["kind"] == "clutter":  # the clean caption intact, plus exactly two clutter words
            vocab = set(CLUTTER_WORDS) | set(colors) | set(shapes)
            for c, o, added in zip(caps, orig, r["added_words"]):
                assert o in c and len(c.split()) == len(o.split()) + 2
                extra = c.replace(o, " ").split()
                assert sorted(extra) == sorted(added) and set(extra) <= vocab
        elif r["kind"] == "partial":  # one of the two noun phrases alone
            for c, o in zip(caps, orig):
                pa, _, pb = parse_caption(o)
                assert parse_caption(c) is None
                assert c in {f"{'an' if x[0][0] in 'aeiou' else 'a'} {x[0]} {x[1]}" for x in (pa, pb)}
        else:  # absent_object: same relation phrase, one object swapped for one not in the image
            for c, o in zip(caps, orig):
                na, nrel, nb = parse_caption(c)
                oa, orel, ob = parse_caption(o)
                assert nrel == orel
                assert len({na, nb} & {oa, ob}) == 1
                new = ({na, nb} - {oa, ob}).pop()
                assert new in objects and new not in {a, b}


def test_named_objects_sees_through_clutter_and_relation():
    both = frozenset({("red", "circle"), ("blue", "square")})
    assert named_objects("a red circle left of a blue square") == both
    assert named_objects("a blue square to the right of a red circle") == both
    assert named_objects("seen paper a red circle above a blue square") == both
    assert named_objects("red a red circle below a blue square triangle") == both
    assert named_objects("a red circle") is None and named_objects("we see a red circle") is None


def test_noisy_copy_is_deterministic_and_leaves_the_data_set_untouched(synthetic_root, tmp_path):
    before = {f: _sha(os.path.join(synthetic_root, f)) for f in ("pretrain.json", "test.json", "vocab.txt", "manifest.json")}
    noise = parse_noise(RATES)
    paths = make_noisy_pretrain(synthetic_root, noise)
    assert paths["dir"].endswith(os.path.join("noisy", noise_key(noise)))
    assert {f: _sha(os.path.join(synthetic_root, f)) for f in before} == before  # test split and clean file unchanged
    first = _sha(paths["pretrain"]), _sha(paths["corruptions"])
    # the official-format file carries nothing extra: same keys as the clean entries
    assert all(set(e) == {"image", "caption", "image_id"} for e in _load(paths["pretrain"]))
    # rebuilt from scratch elsewhere: byte-identical; another noise seed: another draw
    import shutil

    other = tmp_path / "copy"
    shutil.copytree(synthetic_root, other, ignore=shutil.ignore_patterns("noisy"))
    again = make_noisy_pretrain(str(other), noise)
    assert (_sha(again["pretrain"]), _sha(again["corruptions"])) == first
    reseeded = make_noisy_pretrain(str(other), dict(noise, seed=1))
    assert _sha(reseeded["pretrain"]) != first[0]


def test_config_noise_points_training_at_the_noisy_copy_only(synthetic_root, tmp_path):
    cfg = load_config(TINY, [f"data.synthetic.root={synthetic_root}", "data.synthetic.noise.wrong_pair=0.5"])
    prepare_synthetic(cfg)
    (train_file,) = cfg.data.train.ann_files
    assert os.path.dirname(train_file).endswith(os.path.join("noisy", "wrong_pair0.5-clutter0-partial0-absent_object0-seed0"))
    assert cfg.data.test.ann_file == os.path.join(synthetic_root, "test.json")
    assert len(_load(os.path.join(os.path.dirname(train_file), "corruptions.json"))) == round(0.5 * len(_load(train_file)))
    # all rates 0 (or noise: null) is the clean data
    cfg0 = load_config(TINY, [f"data.synthetic.root={synthetic_root}", "data.synthetic.noise.clutter=0"])
    prepare_synthetic(cfg0)
    assert cfg0.data.train.ann_files == [os.path.join(synthetic_root, "pretrain.json")]


@pytest.mark.parametrize("override, words", [
    ("data.synthetic.noise.wrong_pairs=0.1", ["wrong_pairs", "valid keys"]),
    ("data.synthetic.noise.clutter=1.5", ["data.synthetic.noise.clutter", "[0, 1]"]),
    ("data.synthetic.noise={wrong_pair: 0.6, partial: 0.6}", ["add up to 1.200"]),
    ("data.synthetic.noise.partial=lots", ["data.synthetic.noise.partial", "lots"]),
    ("data.synthetic.noise.partial=true", ["data.synthetic.noise.partial", "True"]),
    ("data.synthetic.noise=0.3", ["data.synthetic.noise must be a mapping", "0.3"]),
])
def test_bad_noise_settings_name_the_key(synthetic_root, override, words):
    cfg = load_config(TINY, [f"data.synthetic.root={synthetic_root}", override])
    with pytest.raises(ComponentError) as e:
        prepare_synthetic(cfg)
    for w in words:
        assert w in str(e.value)


def test_noise_needs_the_synthetic_training_file(synthetic_root, tmp_path):
    other = tmp_path / "mine.json"
    other.write_text(json.dumps(_load(os.path.join(synthetic_root, "pretrain.json"))[:4]))
    cfg = load_config(TINY, [f"data.synthetic.root={synthetic_root}", "data.synthetic.noise.partial=0.5", f"data.train.ann_files=[{other}]"])
    with pytest.raises(ComponentError, match="does not read the synthetic training file"):
        prepare_synthetic(cfg)


# --------------------------------------------------------------------------- per-objective alpha
def test_itc_alpha_zero_keeps_hard_targets_while_the_teacher_distils():
    g = torch.Generator().manual_seed(3)
    b, e, q, temp = 3, 4, 2, 0.5
    img, txt, img_m, txt_m = (_unit_rows(b, e, g) for _ in range(4))
    img_q, txt_q = _unit_rows(q, e, g), _unit_rows(q, e, g)
    kw = dict(image_feat_m=img_m, text_feat_m=txt_m, image_queue=img_q, text_queue=txt_q, temp=temp)
    hard = _hand_itc(img, txt, img_m, txt_m, img_q, txt_q, None, None, 0.0, temp)
    soft = _hand_itc(img, txt, img_m, txt_m, img_q, txt_q, None, None, 0.4, temp)
    assert abs(hard - soft) > 1e-3
    teacher = Teacher(alpha=0.4)  # the teacher hands each objective its alpha for the step
    teacher.attach(torch.nn.Module(), [])

    def loss(obj, ramp=1.0):
        teacher.set_alpha_scale(ramp)
        return obj(_make_ctx(img, txt, **kw), teacher.objective_alpha(obj.alpha, obj.heads_used())).item()

    assert loss(ITCLoss()) == pytest.approx(soft, rel=1e-5)
    assert loss(ITCLoss(alpha=0.0)) == pytest.approx(hard, rel=1e-5)
    # an own alpha follows the ramp: 0.6 at ramp 0.5 is 0.3
    assert loss(ITCLoss(alpha=0.6), ramp=0.5) == pytest.approx(_hand_itc(img, txt, img_m, txt_m, img_q, txt_q, None, None, 0.3, temp), rel=1e-5)


def _hand_mlm(model, ids, attn, image, image_m, pos, alpha):
    masked = ids.masked_fill(pos, 4)
    logits = _hand_mlm_logits(model.heads["mlm"], model.text_encoder.table, masked, attn, image)
    teacher = (model.teacher.table[masked] + image_m.sum()).tolist()
    ce, soft = [], []
    for bi in range(2):
        for li in range(LM):
            if pos[bi, li]:
                lse = _lse(logits[bi][li])
                ce.append(lse - logits[bi][li][ids[bi, li].item()])
                t_lse = _lse(teacher[bi][li])
                soft.append(-sum(math.exp(teacher[bi][li][v] - t_lse) * (logits[bi][li][v] - lse) for v in range(V)))
    return (1 - alpha) * sum(ce) / len(ce) + alpha * sum(soft) / len(soft)


@pytest.mark.parametrize("own, ramp, teacher_alpha, expected_alpha", [
    (None, 1.0, 0.4, 0.4),   # the teacher's alpha
    (0.0, 1.0, 0.4, 0.0),    # MLM switched off, teacher still at 0.4 (for ITC)
    (0.3, 1.0, 0.0, 0.3),    # MLM-MoD only: the teacher's alpha 0 does not stop it
    (0.3, 0.5, 0.0, 0.15),   # on the ramp
])
def test_mlm_own_alpha_equals_the_hand_computed_loss(own, ramp, teacher_alpha, expected_alpha):
    obj, model, ids, attn, image, pos = _mlm_setup(seed=5)
    mlm = MLMLoss(vocab_size=V, mask_token_id=4, special_token_ids=(0, 1, 2), alpha=own)
    image_m = torch.randn(2, 3, HM) * 0.01
    batch = {"input_ids": ids, "attention_mask": attn, "mlm_positions": pos}
    feats = torch.zeros(2, 3)
    ctx = _make_ctx(feats, feats.clone(), model=model, batch=batch, image_embeds=image, image_embeds_m=image_m)
    teacher = Teacher(alpha=teacher_alpha)  # an EMA model with a copy of the MLM head, on the ramp
    student = torch.nn.Module()
    student.heads = torch.nn.ModuleDict({"mlm": torch.nn.Linear(1, 1)})
    teacher.attach(student, ["heads.mlm"])
    teacher.set_alpha_scale(ramp)
    loss = mlm(ctx, teacher.objective_alpha(mlm.alpha, mlm.heads_used()))
    assert loss.item() == pytest.approx(_hand_mlm(model, ids, attn, image, image_m, pos, expected_alpha), rel=1e-5, abs=1e-6)
    assert (len(model.teacher.calls) == 1) == (expected_alpha > 0)  # no teacher pass when not distilling


def test_itc_alpha_zero_leaves_mlm_distillation_on_in_the_model(tiny_cfg, tokenizer):
    """Built from a config: model.objectives.itc.alpha=0 switches ITC's distillation off and
    not MLM's; the teacher's ramp reaches both."""
    from albef.modeling import build_model

    model = build_model(tiny_cfg("model.objectives.itc.alpha=0"), tokenizer)
    itc, mlm = model.objectives["itc"], model.objectives["mlm"]
    assert itc.alpha == 0.0 and mlm.alpha is None
    model.set_distillation_scale(0.5)
    alphas = model.objective_alphas()  # what the model hands each objective this step
    assert alphas["itc"] is None and alphas["mlm"] is not None
    assert float(alphas["mlm"]) == pytest.approx(0.4 * 0.5)
    assert float(model.teacher.ramp_now) == 0.5


def test_own_alpha_without_a_momentum_model_is_an_error(tiny_cfg, tokenizer):
    from albef.modeling import build_model

    with pytest.raises(ComponentError, match=r"model.objectives.mlm.alpha=0.4.*NoTeacher"):
        build_model(tiny_cfg("model.teacher={name: NoTeacher}", "model.objectives.mlm.alpha=0.4"), tokenizer)
    with pytest.raises(ComponentError, match=r"model.objectives.itc: alpha must be a number in \[0, 1\] or null.*1.5"):
        build_model(tiny_cfg("model.objectives.itc.alpha=1.5"), tokenizer)
    with pytest.raises(ValueError, match="alpha must be a number"):
        MLMLoss(alpha="0.4")


# --------------------------------------------------------------------------- the inspection tool
@pytest.fixture(scope="module")
def noisy_run(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("noisy_run")
    r = run_cli(["--config-file", TINY, f"data.synthetic.root={synthetic_root}", f"output_dir={out}", "train.max_iter=3",
                 "data.synthetic.noise.wrong_pair=0.25", "data.synthetic.noise.partial=0.25", "train.checkpoint_period=0"])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return str(out)


def _inspect(args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, os.path.join(REPO, "projects", "noisy_pairs", "inspect_pseudo_targets.py"), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_inspect_pseudo_targets_reports_the_teachers_texts(noisy_run, tmp_path):
    """The tool's top texts and weights are the *teacher's*: the checkpoint's EMA text
    projection is replaced by another matrix, and the tool must follow it."""
    from albef.checkpoint import ALBEFCheckpointer
    from albef.data.datasets.retrieval_eval import RetrievalEvalJSON
    from albef.data.tokenization import build_tokenizer
    from albef.evaluation.retrieval import encode_texts
    from albef.modeling import build_model
    from omegaconf import OmegaConf

    cfg = load_config(os.path.join(noisy_run, "config.yaml"))
    prepare_synthetic(cfg)
    tok = build_tokenizer(cfg.data.tokenizer)
    model = build_model(cfg, tok)
    ALBEFCheckpointer(model).load_weights(os.path.join(noisy_run, "model_final.pth"))
    with torch.no_grad():  # a teacher clearly unlike the student
        w = model.teacher.module("text_proj").weight
        w.copy_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0)))
    weights = str(tmp_path / "teacher_changed.pth")
    torch.save({"model": model.state_dict()}, weights)

    out = tmp_path / "inspect"
    r = _inspect(["--config-file", os.path.join(noisy_run, "config.yaml"), "--weights", weights, "--images", "5", "--top-k", "3", "--out", str(out)])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = _load(out / "pseudo_targets.json")
    assert (out / "pseudo_targets.png").stat().st_size > 10_000
    side = _load(res["corruptions"])
    counts = {k: sum(x["kind"] == k for x in side) for k in ("wrong_pair", "partial")}
    assert {k: res["stats"][k]["pairs"] for k in counts} == counts
    assert res["stats"]["all_corrupted"]["pairs"] == len(side) and res["stats"]["clean"]["pairs"] == res["pairs"] - len(side)
    for s in res["stats"].values():
        assert 0 <= s["top1_correct"] <= 100 and 0 < s["chance"] < 100 and 0 <= s["weight_on_correct"] <= 1
    # clean pairs: the correct descriptions are the pair's own captions
    assert res["stats"]["clean"]["top1_correct"] == pytest.approx(res["stats"]["clean"]["top1_is_own_caption"])
    kinds = [it["kind"] for it in res["items"]]
    assert len(kinds) == 5 and {"clean", "wrong_pair", "partial"} <= set(kinds)  # every kind shown

    # recompute one image's teacher distribution directly
    ds = RetrievalEvalJSON(ann_file=res["train_file"], image_root=cfg.data.train.image_root,
                           transforms=OmegaConf.to_container(cfg.data.transforms, resolve=True), max_words=cfg.data.max_words)
    model2 = build_model(cfg, tok)
    ALBEFCheckpointer(model2).load_weights(weights)
    model2.eval()
    bank = sorted(set(ds.text))
    it = res["items"][0]
    img = ds[it["index"]]["image"][None]
    with torch.no_grad():
        tf = {}
        for who in ("teacher", "student"):
            run = (lambda f, *a: model2.teacher.run(model2, f, *a)) if who == "teacher" else (lambda f, *a: f(*a))
            _, _, t = run(encode_texts, model2, tok, bank, cfg.data.max_tokens, 64, "cpu", torch.autocast("cpu", enabled=False), cfg.data.tokenization)
            _, i = run(model2.encode_image, img)
            tf[who] = (i.float() @ t.float().t() / float(model2.temp))[0]  # logits over the bank
    w_t, j_t = tf["teacher"].softmax(0).topk(3)
    assert [bank[j] for j in j_t.tolist()] == [t["text"] for t in it["top"]]
    assert w_t.tolist() == pytest.approx([t["weight"] for t in it["top"]], abs=1e-5)
    assert (tf["teacher"] - tf["student"]).abs().max() > 0.1  # the check can tell them apart
    clean = set(it["clean"])
    assert all(t["correct"] == (t["text"] in clean) for t in it["top"])
    for item in res["items"]:  # a correct description names the image's two objects
        assert all(t["names_both_objects"] or not t["correct"] for t in item["top"])
    for s in res["stats"].values():
        assert s["chance_names_both_objects"] >= s["chance"] and 0 <= s["top1_names_both_objects"] <= 100


@pytest.mark.slow
def test_inspect_pseudo_targets_bad_input(noisy_run, tmp_path):
    cfgf = os.path.join(noisy_run, "config.yaml")
    r = _inspect(["--config-file", cfgf, "--weights", str(tmp_path / "none.pth"), "--out", str(tmp_path / "o")])
    assert r.returncode == 2 and "none.pth" in r.stderr
    r = _inspect(["--config-file", cfgf, "--weights", os.path.join(noisy_run, "model_final.pth"), "--out", str(tmp_path / "o"),
                  "model.teacher={name: NoTeacher}", "model.weights_strict=false"])
    assert r.returncode == 2 and "keeps no momentum model" in r.stderr
    assert not (tmp_path / "o" / "pseudo_targets.json").exists()


# --------------------------------------------------------------------------- sweeps over conditions
def test_differences_are_means_and_standard_errors_by_hand():
    from projects.ablations.ablation_report import differences, differences_table

    def run(v, s, t, i):
        return {"variant": v, "seed": s, "metrics": {"retrieval/txt_r1": t, "retrieval/img_r1": i}}

    runs = [run("base@c0", 0, 10, 10), run("base@c0", 1, 20, 20), run("x@c0", 0, 30, 30), run("x@c0", 1, 40, 40),
            run("base@c1", 0, 10, 10), run("base@c1", 1, 10, 10), run("x@c1", 0, 10, 10), run("x@c1", 1, 30, 30)]
    d = differences(runs, "base", ["c0", "c1"], ["base", "x"], prefixes=("retrieval",))
    assert [(x["condition"], x["delta"]) for x in d] == [("c0", 20.0), ("c1", 10.0)]
    assert d[0]["se"] == pytest.approx(math.sqrt(50 / 2 + 50 / 2)) and d[0]["z"] == pytest.approx(20 / math.sqrt(50))
    assert d[1]["se"] == pytest.approx(math.sqrt(200 / 2 + 0)) and d[1]["z"] == pytest.approx(1.0)
    row = differences_table(d, "base", ["c0", "c1"]).splitlines()[2]
    se = math.sqrt(50 + 100)
    assert row == f"| `x` | ITM | +20.0 ± 7.1 (z +2.8) | +10.0 ± 10.0 (z +1.0) | -10.0 ± {se:.1f} (z {-10 / se:+.1f}) |"
    # one run on a side: no spread to estimate, no standard error (not a spurious z)
    one = differences(runs[:3], "base", ["c0"], ["base", "x"], prefixes=("retrieval",))
    assert one[0]["delta"] == 15.0 and math.isnan(one[0]["se"])
    assert differences_table(one, "base", ["c0"]).splitlines()[2] == "| `x` | ITM | +15.0 (SE n/a) |"
    # variants without ITC get no ITC difference
    no_itc = [dict(r, itc_off=r["variant"].startswith("x"), metrics=dict(r["metrics"], **{"retrieval_itc/txt_r1": 1, "retrieval_itc/img_r1": 1})) for r in runs]
    assert {x["prefix"] for x in differences(no_itc, "base", ["c0", "c1"], ["base", "x"])} == {"retrieval"}


def test_condition_files_become_overrides(tmp_path):
    from projects.ablations.run_ablation import condition_overrides

    f = tmp_path / "c.yaml"
    f.write_text("data:\n  synthetic:\n    noise: {wrong_pair: 0.1, seed: 2}\ntrain: {crop: [1, 2], name: 'a b'}\nmodel: {teacher: null}\n")
    assert condition_overrides(str(f)) == ["data.synthetic.noise.wrong_pair=0.1", "data.synthetic.noise.seed=2",
                                           'train.crop=[1, 2]', 'train.name="a b"', "model.teacher=null"]
    (tmp_path / "b.yaml").write_text("_base_: x.yaml\n")
    with pytest.raises(ValueError, match="without _base_"):
        condition_overrides(str(tmp_path / "b.yaml"))


@pytest.mark.slow
def test_sweep_over_noise_conditions_through_the_command_line(synthetic_root, tmp_path):
    proj = os.path.join(REPO, "projects", "noisy_pairs")
    out = tmp_path / "sweep"
    cmd = [sys.executable, os.path.join(REPO, "projects", "ablations", "run_ablation.py"),
           "--variants", os.path.join(proj, "configs", "mod.yaml"), os.path.join(proj, "configs", "no_mod.yaml"),
           "--conditions", os.path.join(proj, "conditions", "noise_00.yaml"), os.path.join(proj, "conditions", "noise_60.yaml"),
           "--baseline", "no_mod", "--jobs", "2", "--seeds", "0", "--max-iter", "2", "--base-config", TINY, "--output-dir", str(out),
           f"data.synthetic.root={synthetic_root}", "train.checkpoint_period=0"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    runs = [json.loads(line) for line in open(out / "runs.jsonl")]
    assert sorted(x["variant"] for x in runs) == ["mod@noise_00", "mod@noise_60", "no_mod@noise_00", "no_mod@noise_60"]
    assert {x["condition"] for x in runs} == {"noise_00", "noise_60"}
    noisy = load_config(str(out / "no_mod" / "noise_60" / "seed0" / "config.yaml"))
    assert noisy.data.synthetic.noise.wrong_pair == 0.15 and noisy.model.teacher.alpha == 0.0
    assert load_config(str(out / "mod" / "noise_00" / "seed0" / "config.yaml")).data.synthetic.noise is None
    log = (out / "no_mod" / "noise_60" / "seed0" / "stdout.log").read_text()
    assert "training on" in log and os.path.join("noisy", "wrong_pair0.15-clutter0.15-partial0.15-absent_object0.15-seed0") in log
    table = (out / "ablation_table.md").read_text()
    assert "| `mod@noise_60` | 1 |" in table and "Δ vs `no_mod` at noise_00" in table and "| `mod` | ITM |" in table
    assert (out / "ablation_chart.png").stat().st_size > 5_000


@pytest.mark.slow
def test_a_failing_run_under_jobs_is_reported_and_the_others_recorded(synthetic_root, tmp_path):
    proj = os.path.join(REPO, "projects", "noisy_pairs")
    broken = tmp_path / "broken.yaml"  # loads, then fails in the run: its training file does not exist
    broken.write_text(f"data:\n  train:\n    ann_files: [{tmp_path / 'missing.json'}]\n")
    out = tmp_path / "sweep"
    cmd = [sys.executable, os.path.join(REPO, "projects", "ablations", "run_ablation.py"), "--variants", os.path.join(proj, "configs", "mod.yaml"),
           "--conditions", os.path.join(proj, "conditions", "noise_00.yaml"), str(broken), "--jobs", "2", "--seeds", "0",
           "--max-iter", "2", "--base-config", TINY, "--output-dir", str(out), f"data.synthetic.root={synthetic_root}", "train.checkpoint_period=0"]
    r = subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode != 0 and "mod@broken seed 0 failed" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    runs = [json.loads(line) for line in open(out / "runs.jsonl")]
    assert [x["variant"] for x in runs] == ["mod@noise_00"]  # the run beside it finished and was kept
