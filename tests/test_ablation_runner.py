"""projects/ablations and projects/ablations/run_ablation.py: each variant changes only what it should,
the summary statistics and table are right, the chart is drawn, and a tiny sweep runs
end to end through the real command line (and resumes without rerunning)."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from conftest import REPO, TINY
from albef.config import config_to_dict, load_config
from projects.ablations.ablation_report import bar_chart_png, markdown_table, mean_sd, summarize

ABL = os.path.join(REPO, "projects", "ablations", "configs")
DEFAULT = os.path.join(REPO, "configs", "pretrain", "synthetic.yaml")


def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat(v, key + "."))
        else:
            out[key] = v
    return out


def diff(path):
    a, b = flat(config_to_dict(load_config(DEFAULT))), flat(config_to_dict(load_config(path)))
    return {k: b.get(k, "<absent>") for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>")}


EXPECTED = {
    "mlm_itm": {
        "model.objectives.itc": None, "model.objectives.itm.miner.name": "RandomNegativeMiner",
        "model.objectives.itm.miner.temperature": "<absent>", "model.teacher.name": "NoTeacher",
        "model.teacher.momentum": "<absent>", "model.teacher.queue_size": "<absent>", "model.teacher.alpha": "<absent>",
        "eval.retrieval.k_test": 1000000,
        # itc: null drops its subtree
        "model.objectives.itc.name": "<absent>", "model.objectives.itc.weight": "<absent>",
    },
    "itc_mlm_itm": {"model.objectives.itm.miner.name": "RandomNegativeMiner", "model.objectives.itm.miner.temperature": "<absent>", "model.teacher.alpha": 0.0},
    "itc_mlm_itm_hard": {"model.teacher.alpha": 0.0},
    "itc_mlm_itm_hard_mod": {},
    "mlm_itm_mod_no_itc": {
        "model.objectives.itc": None, "model.objectives.itc.name": "<absent>", "model.objectives.itc.weight": "<absent>",
        "model.objectives.itm.miner.name": "RandomNegativeMiner", "model.objectives.itm.miner.temperature": "<absent>", "eval.retrieval.k_test": 1000000,
    },
}


def test_every_variant_file_is_listed():
    assert sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(ABL, "*.yaml"))) == sorted(EXPECTED)


@pytest.mark.parametrize("variant", sorted(EXPECTED))
def test_variant_changes_only_what_it_names(variant):
    assert diff(os.path.join(ABL, f"{variant}.yaml")) == EXPECTED[variant]


def test_mean_and_sample_sd():
    assert mean_sd([10.0, 20.0, 30.0]) == (20.0, 10.0)
    assert mean_sd([5.0]) == (5.0, 0.0)


def _run(variant, seed, r1, itc=True):
    m = {"retrieval/txt_r1": r1, "retrieval/txt_r5": r1 + 10, "retrieval/img_r1": r1 / 2, "retrieval/img_r5": r1, "retrieval/r_mean": r1}
    if itc:
        m.update({"retrieval_itc/txt_r1": r1 - 1, "retrieval_itc/img_r1": r1 - 2})
    return {"variant": variant, "seed": seed, "wall_s": 60.0 * (seed + 1), "metrics": m, "itc_off": not itc}


def test_summary_table_and_chart(tmp_path):
    runs = [_run("b", s, 10.0 * (s + 1)) for s in range(3)] + [_run("a", s, 40.0, itc=False) for s in range(2)]
    rows = summarize(runs, order=["b", "a"])
    assert [r["variant"] for r in rows] == ["b", "a"]
    assert rows[0]["retrieval/txt_r1"] == (20.0, 10.0) and rows[0]["retrieval/img_r1"] == (10.0, 5.0)
    assert rows[0]["wall_s"] == (120.0, 60.0)
    assert "retrieval_itc/txt_r1" not in rows[1]
    table = markdown_table(rows).splitlines()
    assert table[0].startswith("| variant | seeds | TR@1 | TR@5 | IR@1 | IR@5 | r_mean | ITC TR@1 | ITC IR@1 |")
    assert table[2] == "| `b` | 3 | 20.0 ± 10.0 | 30.0 ± 10.0 | 10.0 ± 5.0 | 20.0 ± 10.0 | 20.0 ± 10.0 | 19.0 ± 10.0 | 18.0 ± 10.0 | 2.00 ± 1.00 |"
    assert table[3] == "| `a` | 2 | 40.0 ± 0.0 | 50.0 ± 0.0 | 20.0 ± 0.0 | 40.0 ± 0.0 | 40.0 ± 0.0 | n/a | n/a | 1.50 ± 0.71 |"
    one = markdown_table(summarize([_run("c", 0, 30.0)])).splitlines()[2]
    assert one.startswith("| `c` | 1 | 30.0 | 40.0 | 15.0 |") and "±" not in one  # one seed: no spread shown
    png = str(tmp_path / "c.png")
    bar_chart_png(rows, png)
    img = Image.open(png).convert("RGB")
    colours = {c for _, c in img.getcolors(1 << 20)}
    assert (66, 114, 196) in colours and (237, 125, 49) in colours  # both series' bars were drawn


@pytest.mark.slow
def test_tiny_sweep_through_the_command_line(synthetic_root, tmp_path):
    out = tmp_path / "abl"
    cmd = [sys.executable, os.path.join(REPO, "projects", "ablations", "run_ablation.py"), "--variants", os.path.join(ABL, "itc_mlm_itm_hard_mod.yaml"), os.path.join(ABL, "mlm_itm.yaml"),
           "--seeds", "0", "1", "--max-iter", "2", "--base-config", TINY, "--output-dir", str(out), f"data.synthetic.root={synthetic_root}", "train.checkpoint_period=0"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    runs = [json.loads(l) for l in open(out / "runs.jsonl")]
    assert sorted((x["variant"], x["seed"]) for x in runs) == [("itc_mlm_itm_hard_mod", 0), ("itc_mlm_itm_hard_mod", 1), ("mlm_itm", 0), ("mlm_itm", 1)]
    assert all(x["max_iter"] == 2 and "retrieval/txt_r1" in x["metrics"] for x in runs)
    # Every run used its seed and the tiny base (the --base-config swap), and its own output dir.
    used = load_config(str(out / "mlm_itm" / "seed1" / "config.yaml"))
    assert used.train.seed == 1 and used.model.embed_dim == 16 and used.model.objectives.itc is None
    table = (out / "ablation_table.md").read_text().splitlines()
    rows = [l for l in table if l.startswith("| `")]
    assert rows[0].startswith("| `mlm_itm` | 2 |") and rows[0].count("n/a") == 2  # paper order; no ITC columns
    assert rows[1].startswith("| `itc_mlm_itm_hard_mod` | 2 |") and "n/a" not in rows[1]
    assert Image.open(out / "ablation_chart.png").size[0] > 100
    # Repeating the command reruns nothing.
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0 and r.stdout.count("skip ") == 4 and "$ " not in r.stdout
    # The same output dir with another budget would mix incomparable runs: refused, nothing run.
    other = [c if c != "2" or cmd[i - 1] != "--max-iter" else "3" for i, c in enumerate(cmd)]
    r = subprocess.run(other, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 2 and "another config, overrides or budget" in r.stderr and "$ " not in r.stdout


def test_bad_variant_is_reported_before_any_run(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text(f"_base_: {DEFAULT}\ntrain:\n  max_itr: 3\n")
    r = subprocess.run([sys.executable, os.path.join(REPO, "projects", "ablations", "run_ablation.py"), "--variants", str(bad), "--output-dir", str(tmp_path / "o")],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "typo" in r.stderr and "max_itr" in r.stderr and "max_iter" in r.stderr
    assert not (tmp_path / "o" / "runs.jsonl").exists()
