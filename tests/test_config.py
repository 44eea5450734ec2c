"""Tests of config loading: _base_ chains, strict merging, overrides, dump/reload (albef.config)."""
from __future__ import annotations

import glob
import os

import pytest
import yaml
from omegaconf import DictConfig, OmegaConf

from albef.config import ConfigError, config_to_dict, dump_config, get_default_config_dict, load_config, parse_overrides

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(path, text: str) -> str:
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


# ---------------------------------------------------------------------- _base_ inheritance


def test_base_chain_three_files_relative_paths(tmp_path, monkeypatch):
    write(tmp_path / "base" / "root.yaml", "train: {lr: 2.0e-4, batch_size: 8, max_iter: 10}\noutput_dir: root\n")
    write(tmp_path / "base" / "mid.yaml", "_base_: root.yaml\ntrain: {batch_size: 16}\nmodel: {embed_dim: 128}\n")
    leaf = write(tmp_path / "runs" / "leaf.yaml", "_base_: ../base/mid.yaml\ntrain: {max_iter: 99}\n")
    monkeypatch.chdir(tmp_path / "base")  # relative _base_ paths are relative to the file, not the cwd
    cfg = load_config(os.path.relpath(leaf, tmp_path / "base"))
    assert cfg.train.lr == pytest.approx(2.0e-4)  # from root
    assert cfg.train.batch_size == 16  # mid overrides root
    assert cfg.train.max_iter == 99  # leaf overrides both
    assert cfg.model.embed_dim == 128
    assert cfg.output_dir == "root"
    assert cfg.train.weight_decay == pytest.approx(0.02)  # untouched schema default


def test_base_list_later_wins(tmp_path):
    write(tmp_path / "a.yaml", "train: {lr: 1.0e-3, batch_size: 4}\n")
    write(tmp_path / "b.yaml", "train: {lr: 5.0e-4}\neval: {retrieval: {k_test: 3}}\n")
    leaf = write(tmp_path / "c.yaml", "_base_: [a.yaml, b.yaml]\neval: {retrieval: {batch_size: 5}}\n")
    cfg = load_config(leaf)
    assert cfg.train.lr == pytest.approx(5.0e-4)
    assert cfg.train.batch_size == 4
    assert (cfg.eval.retrieval.k_test, cfg.eval.retrieval.batch_size) == (3, 5)


def test_base_absolute_path(tmp_path):
    a = write(tmp_path / "x" / "a.yaml", "train: {batch_size: 3}\n")
    leaf = write(tmp_path / "y" / "b.yaml", f"_base_: {a}\n")
    assert load_config(leaf).train.batch_size == 3


def test_circular_base_chain(tmp_path):
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: c.yaml\n")
    write(tmp_path / "c.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError) as ei:
        load_config(str(tmp_path / "a.yaml"))
    msg = str(ei.value)
    assert "circular" in msg
    for n in ("a.yaml", "b.yaml", "c.yaml"):
        assert n in msg


def test_self_base_is_circular(tmp_path):
    p = write(tmp_path / "a.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(p)


def test_missing_base_file(tmp_path):
    p = write(tmp_path / "a.yaml", "_base_: nope.yaml\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert "nope.yaml" in str(ei.value)


def test_nested_base_key_rejected(tmp_path):
    p = write(tmp_path / "a.yaml", "train:\n  _base_: x.yaml\n")
    with pytest.raises(ConfigError, match="_base_"):
        load_config(p)


def test_non_mapping_file(tmp_path):
    p = write(tmp_path / "a.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert p in str(ei.value)


def test_empty_file_is_defaults(tmp_path):
    p = write(tmp_path / "a.yaml", "")
    assert config_to_dict(load_config(p)) == config_to_dict(load_config(None))


# ---------------------------------------------------------------------- overrides


def test_parse_overrides_nested_and_yaml_values():
    d = parse_overrides([
        "a.b=1", "a.c=x", "model.teacher={name: X, k: 1}", "l=[1, 2]", "n=null", "e=", "u=a=b",
    ])
    assert d == {"a": {"b": 1, "c": "x"}, "model": {"teacher": {"name": "X", "k": 1}}, "l": [1, 2], "n": None, "e": "", "u": "a=b"}


@pytest.mark.parametrize("bad", ["noequals", "=1", "a..b=1", ".a=1"])
def test_parse_overrides_rejects_bad_items(bad):
    with pytest.raises(ConfigError, match="command line"):
        parse_overrides([bad])


def test_override_conflict():
    with pytest.raises(ConfigError, match="conflicts"):
        parse_overrides(["a=1", "a.b=2"])


def test_override_values():
    cfg = load_config(None, [
        "train.batch_size=7", "train.lr=3.0e-4", "train.betas=[0.8, 0.9]", "data.transforms.crop_scale=null",
        "output_dir=/tmp/x", "data.strict=true", "train.clip_grad=2.5",
    ])
    assert cfg.train.batch_size == 7 and isinstance(cfg.train.batch_size, int)
    assert cfg.train.lr == pytest.approx(3e-4)
    assert list(cfg.train.betas) == [0.8, 0.9]
    assert cfg.data.transforms.crop_scale is None
    assert cfg.output_dir == "/tmp/x"
    assert cfg.data.strict is True
    assert cfg.train.clip_grad == pytest.approx(2.5)


def test_override_applies_after_file(tmp_path):
    p = write(tmp_path / "a.yaml", "train: {batch_size: 3}\n")
    assert load_config(p, ["train.batch_size=5"]).train.batch_size == 5


def test_misspelt_key_in_file(tmp_path):
    p = write(tmp_path / "run.yaml", "train:\n  warmup_iter: 10\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    msg = str(ei.value)
    assert os.path.abspath(p) in msg
    assert "'train.warmup_iter'" in msg
    assert "Did you mean" in msg and "train.warmup_iters" in msg


def test_misspelt_key_in_base_file_names_that_file(tmp_path):
    write(tmp_path / "base.yaml", "data:\n  max_word: 20\n")
    leaf = write(tmp_path / "leaf.yaml", "_base_: base.yaml\n")
    with pytest.raises(ConfigError) as ei:
        load_config(leaf)
    msg = str(ei.value)
    assert str(tmp_path / "base.yaml") in msg and "leaf.yaml" not in msg
    assert "'data.max_word'" in msg and "data.max_words" in msg


def test_misspelt_top_level_section_in_file(tmp_path):
    p = write(tmp_path / "run.yaml", "trian:\n  lr: 1.0e-4\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert "'trian'" in str(ei.value) and "train" in str(ei.value)


def test_misspelt_key_on_command_line():
    with pytest.raises(ConfigError) as ei:
        load_config(None, ["train.min_lrr=1.0e-6"])
    msg = str(ei.value)
    assert msg.startswith("command line")
    assert "'train.min_lrr'" in msg and "train.min_lr" in msg


def test_misspelt_intermediate_key_on_command_line():
    with pytest.raises(ConfigError) as ei:
        load_config(None, ["data.transfroms.hflip_prob=0.1"])
    msg = str(ei.value)
    assert "'data.transfroms'" in msg and "data.transforms" in msg


def test_type_mismatch():
    with pytest.raises(ConfigError) as ei:
        load_config(None, ["train.lr=abc"])
    msg = str(ei.value)
    assert "'train.lr'" in msg and "abc" in msg and "float" in msg and "str" in msg


@pytest.mark.parametrize("ov", ["train.batch_size=[1, 2]", "data.strict=1", "output_dir=3", "train.betas=0.9", "data.transforms=3"])
def test_other_type_mismatches(ov):
    with pytest.raises(ConfigError, match="expects a value like"):
        load_config(None, [ov])


def test_type_mismatch_in_file(tmp_path):
    p = write(tmp_path / "a.yaml", "train: {max_iter: many}\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert os.path.abspath(p) in str(ei.value) and "train.max_iter" in str(ei.value)


def test_override_float_in_exponent_notation():
    assert load_config(None, ["train.lr=1e-4"]).train.lr == pytest.approx(1e-4)


def test_override_amp_off():
    import torch

    from albef.engine.defaults import resolve_amp

    cfg = load_config(None, ["train.amp=off"])
    assert resolve_amp(cfg, torch.device("cpu")) is False


# ---------------------------------------------------------------------- component nodes


def test_component_name_change_drops_old_kwargs():
    cfg = load_config(None, ["model.teacher={name: NoTeacher}"])
    assert dict(cfg.model.teacher) == {"name": "NoTeacher"}
    assert "momentum" not in cfg.model.teacher


def test_component_name_change_in_file(tmp_path):
    p = write(tmp_path / "a.yaml", "model:\n  objectives:\n    itm: {name: ITCLoss}\n")
    cfg = load_config(p)
    assert dict(cfg.model.objectives.itm) == {"name": "ITCLoss"}


def test_component_kwarg_change_merges():
    cfg = load_config(None, ["model.teacher.momentum=0.9"])
    assert cfg.model.teacher.name == "MomentumTeacher"
    assert cfg.model.teacher.momentum == pytest.approx(0.9)
    assert cfg.model.teacher.queue_size == 65536 and cfg.model.teacher.alpha == pytest.approx(0.4)


def test_component_same_name_merges():
    cfg = load_config(None, ["model.teacher={name: MomentumTeacher, alpha: 0.0}"])
    assert dict(cfg.model.teacher) == {"name": "MomentumTeacher", "momentum": 0.995, "queue_size": 65536, "alpha": 0.0}


def test_component_node_accepts_new_kwargs():
    # unknown constructor arguments are checked when the component is built, not here
    cfg = load_config(None, ["model.vision_encoder.model_kwargs={depth: 2}"])
    assert cfg.model.vision_encoder.model_kwargs.depth == 2


def test_objective_switched_off():
    cfg = load_config(None, ["model.objectives.mlm=null"])
    assert cfg.model.objectives.mlm is None
    assert cfg.model.objectives.itc.name == "ITCLoss" and cfg.model.objectives.itm.name == "ITMLoss"


def test_objective_switched_off_then_on_again(tmp_path):
    p = write(tmp_path / "a.yaml", "model:\n  objectives:\n    mlm: null\n")
    cfg = load_config(p, ["model.objectives.mlm={name: MLMLoss, mask_prob: 0.3}"])
    assert dict(cfg.model.objectives.mlm) == {"name": "MLMLoss", "mask_prob": 0.3}


def test_new_objective_key():
    cfg = load_config(None, ["model.objectives.itc2={name: ITCLoss, weight: 0.5}"])
    assert dict(cfg.model.objectives.itc2) == {"name": "ITCLoss", "weight": 0.5}
    assert set(cfg.model.objectives) == {"itc", "itm", "mlm", "itc2"}


def test_new_key_in_plain_section_rejected():
    # component nodes are open (their keys are checked when built); plain sections are not
    with pytest.raises(ConfigError) as ei:
        load_config(None, ["train.max_itr=3"])
    assert "train.max_iter" in str(ei.value)
    with pytest.raises(ConfigError) as ei:  # a key of an evaluator component is open, a moved one is named
        load_config(None, ["eval.k_test=3"])
    assert "moved to 'eval.retrieval.k_test'" in str(ei.value)
    with pytest.raises(ConfigError):
        load_config(None, ["data.transforms.randaugment.num_op=3"])


def test_free_form_map_accepts_keys():
    cfg = load_config(None, ["data.transforms.hflip_swap_words={left: right, right: left}"])
    assert dict(cfg.data.transforms.hflip_swap_words) == {"left": "right", "right": "left"}
    cfg = load_config(None, ["data.transforms.hflip_swap_words.top=bottom"])
    assert dict(cfg.data.transforms.hflip_swap_words) == {"top": "bottom"}


def test_free_form_map_accepts_keys_after_base_filled_it():
    cfg = load_config(os.path.join(REPO, "configs", "pretrain", "synthetic.yaml"), ["data.transforms.hflip_swap_words.top=bottom"])
    assert cfg.data.transforms.hflip_swap_words.top == "bottom"


def test_free_form_map_can_be_emptied():
    cfg = load_config(os.path.join(REPO, "configs", "pretrain", "synthetic.yaml"), ["data.transforms.hflip_swap_words={}"])
    assert dict(cfg.data.transforms.hflip_swap_words) == {}


def test_free_form_map_null_switches_off():
    cfg = load_config(os.path.join(REPO, "configs", "pretrain", "synthetic.yaml"), ["data.transforms.hflip_swap_words=null"])
    assert cfg.data.transforms.hflip_swap_words is None


# ---------------------------------------------------------------------- dump / reload


@pytest.mark.parametrize(
    "path,overrides",
    [
        (None, []),
        ("configs/pretrain/synthetic.yaml", []),
        ("configs/pretrain/ALBEF-4M.yaml", ["model.teacher={name: NoTeacher}", "model.objectives.mlm=null"]),
        ("tests/configs/tiny.yaml", ["model.objectives.extra={name: ITCLoss, weight: 0.1}", "train.clip_grad=null", "data.transforms.hflip_swap_words=null"]),
    ],
)
def test_dump_then_load_reproduces(tmp_path, path, overrides):
    cfg = load_config(os.path.join(REPO, path) if path else None, overrides)
    out = str(tmp_path / "sub" / "config.yaml")
    dump_config(cfg, out)
    again = load_config(out)
    assert config_to_dict(again) == config_to_dict(cfg)
    # and the dump is a fully resolved tree (no interpolations left)
    with open(out) as f:
        assert "${" not in f.read()


def test_dump_resolves_interpolation(tmp_path):
    cfg = load_config(None, ["model.vision_encoder.img_size=128"])
    assert cfg.data.transforms.image_res == 128
    out = str(tmp_path / "c.yaml")
    dump_config(cfg, out)
    with open(out) as f:
        raw = yaml.safe_load(f)
    assert raw["data"]["transforms"]["image_res"] == 128


def test_bad_interpolation_is_config_error(tmp_path):
    p = write(tmp_path / "a.yaml", "output_dir: ${nope.missing}\n")
    with pytest.raises(ConfigError):
        load_config(p)


# ---------------------------------------------------------------------- shipped configs


def _all_yaml():
    files = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))
    files += sorted(glob.glob(os.path.join(REPO, "tests", "configs", "**", "*.yaml"), recursive=True))
    return files


def test_found_shipped_configs():
    names = {os.path.relpath(f, REPO) for f in _all_yaml()}
    assert {"configs/Base-ALBEF.yaml", "configs/pretrain/ALBEF-4M.yaml", "configs/pretrain/synthetic.yaml", "tests/configs/tiny.yaml"} <= names


@pytest.mark.parametrize("path", _all_yaml(), ids=lambda p: os.path.relpath(p, REPO))
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, DictConfig)
    config_to_dict(cfg)  # resolves


def test_base_albef_is_paper_4m_recipe():
    path = os.path.join(REPO, "configs", "Base-ALBEF.yaml")
    cfg = load_config(path)
    m, d, t = cfg.model, cfg.data, cfg.train
    assert m.name == "ALBEF"
    # ViT-B/16 at 256
    assert m.vision_encoder.name == "TimmViT"
    assert m.vision_encoder.model_name == "vit_base_patch16_224"
    assert m.vision_encoder.img_size == 256
    assert "model_kwargs" not in m.vision_encoder
    assert d.transforms.image_res == 256
    # BERT-base split 6 + 6, hidden 768
    assert m.text_encoder.name == "BertTextEncoder" and m.text_encoder.num_layers == 6
    assert m.text_encoder.config.hidden_size == 768
    assert m.text_encoder.config.num_attention_heads == 12
    assert m.text_encoder.config.intermediate_size == 3072
    assert m.fusion.name == "CrossAttentionFusion" and m.fusion.num_layers == 6
    assert m.embed_dim == 256
    assert m.temp == pytest.approx(0.07)
    # momentum distillation
    assert m.teacher.name == "MomentumTeacher"
    assert m.teacher.queue_size == 65536
    assert m.teacher.momentum == pytest.approx(0.995)
    assert m.teacher.alpha == pytest.approx(0.4)
    # ITC + hard-negative ITM + MLM 15%
    obj = m.objectives
    assert set(k for k, v in obj.items() if v is not None) == {"itc", "itm", "mlm"}
    assert obj.itc.name == "ITCLoss" and obj.itm.name == "ITMLoss" and obj.mlm.name == "MLMLoss"
    assert obj.itm.miner.name == "ContrastiveHardNegativeMiner"
    assert obj.mlm.mask_prob == pytest.approx(0.15)
    assert obj.itc.weight == obj.itm.weight == obj.mlm.weight == 1.0
    # data: official pre_caption / tokenizer limits and transforms
    assert d.max_words == 30 and d.max_tokens == 25
    assert list(d.transforms.crop_scale) == [0.2, 1.0]
    assert d.transforms.hflip_prob == pytest.approx(0.5)
    assert dict(d.transforms.hflip_swap_words) == {}
    assert d.transforms.randaugment.num_ops == 2 and d.transforms.randaugment.magnitude == 7
    from albef.data.transforms import OFFICIAL_AUGS

    assert tuple(d.transforms.randaugment.ops) == OFFICIAL_AUGS
    assert list(d.transforms.mean) == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert list(d.transforms.std) == pytest.approx([0.26862954, 0.26130258, 0.27577711])
    # optimisation: AdamW lr 1e-4, wd 0.02, batch 64, 2000-iteration warm-up from 1e-5 then cosine to 1e-5
    assert t.lr == pytest.approx(1e-4)
    assert t.weight_decay == pytest.approx(0.02)
    assert t.batch_size == 64
    assert list(t.betas) == pytest.approx([0.9, 0.999]) and t.eps == pytest.approx(1e-8)
    assert t.warmup_lr == pytest.approx(1e-5) and t.warmup_iters == 2000
    assert t.min_lr == pytest.approx(1e-5)
    assert t.clip_grad is None
    # evaluation as the official Retrieval.py
    assert cfg.eval.retrieval.k_test == 256 and cfg.eval.retrieval.max_tokens == 30


def test_base_albef_file_does_not_repeat_the_schema():
    """One place for defaults: Base-ALBEF.yaml names the recipe, the schema holds its values
    (so a default changed in the schema cannot silently disagree with the file)."""
    with open(os.path.join(REPO, "configs", "Base-ALBEF.yaml")) as f:
        raw = yaml.safe_load(f)
    assert "_base_" not in raw
    defaults = get_default_config_dict()

    def leaves(node, prefix=""):
        for k, v in node.items():
            if isinstance(v, dict):
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    schema = dict(leaves(defaults))
    restated = [k for k, v in leaves(raw) if not k.endswith(".name") and schema.get(k, object()) == v]
    assert restated == [], f"Base-ALBEF.yaml repeats schema defaults: {restated}"


def test_4m_config_schedule():
    cfg = load_config(os.path.join(REPO, "configs", "pretrain", "ALBEF-4M.yaml"))
    assert cfg.data.train.name == "PretrainJSON" and len(cfg.data.train.ann_files) == 5
    assert cfg.data.test.name == "RetrievalEvalJSON"
    assert cfg.train.batch_size == 64
    cfg14 = load_config(os.path.join(REPO, "configs", "pretrain", "ALBEF-14M.yaml"))
    assert len(cfg14.data.train.ann_files) == 6 and cfg14.train.lr == pytest.approx(1e-4)


def test_defaults_equal_base_albef_recipe_for_model_and_train():
    base = config_to_dict(load_config(os.path.join(REPO, "configs", "Base-ALBEF.yaml")))
    defaults = config_to_dict(load_config(None))
    assert base["model"] == defaults["model"]
    assert base["train"] == defaults["train"]


# ---------------------------------------------------------------------- struct mode


def test_struct_mode():
    cfg = load_config(None)
    assert OmegaConf.is_struct(cfg)
    with pytest.raises(Exception):
        _ = cfg.train.not_a_key
    with pytest.raises(Exception):
        _ = cfg.model.teacher.not_a_key
    with pytest.raises(Exception):
        cfg.train.not_a_key = 1


def test_defaults_are_copies():
    d = get_default_config_dict()
    d["train"]["lr"] = 123.0
    assert get_default_config_dict()["train"]["lr"] == pytest.approx(1e-4)
    assert load_config(None).train.lr == pytest.approx(1e-4)


def _model_configs():
    """Every config of configs/ and of the projects (not the plugin example's: it needs the
    plugin installed, and its own test trains with it; not override fragments)."""
    files = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))
    files += sorted(f for f in glob.glob(os.path.join(REPO, "projects", "*", "configs", "*.yaml")) if "plugin_example" not in f)
    return files


@pytest.mark.parametrize("path", _model_configs(), ids=lambda p: os.path.relpath(p, REPO))
def test_every_config_builds_its_model(path, synthetic_root, tokenizer):
    """The model of every shipped config builds (on the meta device: shapes, no weights, no
    downloads; the public-weight initialisation is the checkpoint tests' business)."""
    import torch

    from albef.modeling import build_model

    cfg = load_config(path, [f"data.synthetic.root={synthetic_root}"])
    with torch.device("meta"):
        model = build_model(cfg, tokenizer, public_init=False)
    assert set(model.objectives) and all(p.is_meta for p in model.parameters())
