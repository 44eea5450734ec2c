"""Tests of the component registries (registration where a component is defined, lookups,
provenance) and the config-node builder (albef.registry)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from albef.registry import (
    ALL_REGISTRIES,
    BUILTIN_PROVIDER,
    DATASET_REGISTRY,
    MINER_REGISTRY,
    OBJECTIVE_REGISTRY,
    TEACHER_REGISTRY,
    ComponentError,
    Registry,
    RegistrationError,
    build_component,
    get_component,
    registered_names,
)

BUILTINS = {
    "meta_arch": {"ALBEF"},
    "vision_encoder": {"TimmViT"},
    "text_encoder": {"BertTextEncoder"},
    "fusion": {"CrossAttentionFusion"},
    "objective": {"ITCLoss", "ITMLoss", "MLMLoss", "ClassificationLoss", "TextAssignmentLoss"},
    "miner": {"ContrastiveHardNegativeMiner", "HardestNegativeMiner", "RandomNegativeMiner"},
    "teacher": {"MomentumTeacher", "NoTeacher"},
    "dataset": {"PretrainJSON", "RetrievalEvalJSON", "VisualEntailmentJSON", "NLVR2JSON"},
    "head": {"ITMHead", "MLMHead", "MLPClassifierHead", "LinearClassifierHead"},
    "collator": {"ImageTextCollator"},
    "loader": {"MapStyleLoader", "StreamingLoader"},
    "text_negatives": {"CompositionalNegatives"},
    "evaluator": {"RetrievalEvaluator", "ClassificationEvaluator"},
    "trainer": {"DefaultTrainer"},
}


def _load_builtins() -> None:
    # The built-ins register when their family packages are imported; the trainer's module
    # imports every family it builds from (model, data, evaluators, itself).
    import albef.engine.defaults  # noqa: F401


def test_all_families_listed():
    assert set(ALL_REGISTRIES) == set(BUILTINS)


@pytest.mark.parametrize("family", sorted(BUILTINS))
def test_builtins_registered(family):
    _load_builtins()
    reg = ALL_REGISTRIES[family]
    names = set(registered_names(reg))
    missing = BUILTINS[family] - names
    assert not missing, f"{family}: {missing} not registered (have {sorted(names)})"
    for name in BUILTINS[family]:
        assert get_component(reg, name) is reg.get(name)


@pytest.mark.slow
def test_builtins_registered_in_fresh_process():
    """In a fresh interpreter (as a spawned rank or DataLoader worker starts), importing the
    family's package registers its built-ins by itself."""
    import subprocess
    import sys

    code = (
        "import albef.modeling.objectives\n"
        "from albef.registry import OBJECTIVE_REGISTRY, get_component, registered_names\n"
        "get_component(OBJECTIVE_REGISTRY, 'ITCLoss')\n"
        "print(','.join(registered_names(OBJECTIVE_REGISTRY)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert {"ITCLoss", "ITMLoss", "MLMLoss"} <= set(out.stdout.strip().split(","))


def test_registry_module_is_a_leaf_and_builders_import_their_families():
    """``albef.registry`` imports nothing of albef; importing a builder registers every family it builds."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import albef.registry as r\n"
        "assert sorted(m for m in sys.modules if m.startswith('albef')) == ['albef', 'albef.registry'], sorted(sys.modules)\n"
        "assert all(len(reg) == 0 for reg in r.ALL_REGISTRIES.values())\n"
        "import albef.modeling.build, albef.data.build\n"
        "empty = [f for f, reg in r.ALL_REGISTRIES.items() if len(reg) == 0]\n"
        "assert empty == ['evaluator', 'trainer'], empty\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_unknown_name_lists_family_and_suggests():
    _load_builtins()
    with pytest.raises(ComponentError) as ei:
        get_component(TEACHER_REGISTRY, "MomentumTeachr", where="model.teacher")
    msg = str(ei.value)
    assert "MomentumTeachr" in msg
    assert "model.teacher" in msg
    assert "Did you mean: MomentumTeacher" in msg
    listed = msg.split("Registered", 1)[1]
    for name in registered_names(TEACHER_REGISTRY):
        assert name in listed


def test_unknown_miner_lists_all_three():
    _load_builtins()
    with pytest.raises(ComponentError) as ei:
        get_component(MINER_REGISTRY, "HardestNegativMiner")
    msg = str(ei.value)
    assert "Did you mean: HardestNegativeMiner" in msg
    for name in BUILTINS["miner"]:
        assert name in msg.split("Registered", 1)[1]


def test_unknown_name_without_close_match_has_no_hint():
    _load_builtins()
    with pytest.raises(ComponentError) as ei:
        get_component(DATASET_REGISTRY, "zzzzqqqq")
    msg = str(ei.value)
    assert "Did you mean" not in msg
    assert "PretrainJSON" in msg and "RetrievalEvalJSON" in msg


def test_component_error_is_value_error():
    assert issubclass(ComponentError, ValueError)


# ---------------------------------------------------------------------- a test component


class _Widget:
    def __init__(self, size: int, colour: str = "red", hidden_size: int = 0):
        self.size, self.colour, self.hidden_size = size, colour, hidden_size


class _KwWidget:
    def __init__(self, size: int = 1, **kwargs):
        self.size, self.kwargs = size, kwargs


class _FactoryWidget:
    def __init__(self, inner):
        self.inner = inner

    @classmethod
    def from_config(cls, *, size: int, scale: int = 2):
        return cls(size * scale)


@pytest.fixture()
def widgets():
    names = {"_TestWidget": _Widget, "_TestKwWidget": _KwWidget, "_TestFactoryWidget": _FactoryWidget}
    _load_builtins()
    for n, c in names.items():
        OBJECTIVE_REGISTRY.register(c, name=n)
    try:
        yield names
    finally:
        for n in names:
            OBJECTIVE_REGISTRY.unregister(n)
    assert not set(names) & set(registered_names(OBJECTIVE_REGISTRY))


def test_registered_test_component_builds_by_name(widgets):
    w = build_component(OBJECTIVE_REGISTRY, {"name": "_TestWidget", "size": 3, "colour": "blue"}, where="model.objectives.w")
    assert isinstance(w, _Widget)
    assert (w.size, w.colour, w.hidden_size) == (3, "blue", 0)
    assert "_TestWidget" in registered_names(OBJECTIVE_REGISTRY)


def test_build_from_dictconfig(widgets):
    node = OmegaConf.create({"name": "_TestWidget", "size": 5})
    OmegaConf.set_struct(node, True)
    w = build_component(OBJECTIVE_REGISTRY, node, where="x")
    assert isinstance(w, _Widget) and w.size == 5


def test_unknown_kwarg_names_where_key_and_closest(widgets):
    with pytest.raises(ComponentError) as ei:
        build_component(OBJECTIVE_REGISTRY, {"name": "_TestWidget", "size": 3, "colur": "blue"}, where="model.objectives.w")
    msg = str(ei.value)
    assert "'model.objectives.w.colur'" in msg
    assert "did you mean: colour" in msg
    assert "_TestWidget" in msg


def test_unknown_kwarg_in_builtin_component():
    _load_builtins()
    with pytest.raises(ComponentError) as ei:
        build_component(TEACHER_REGISTRY, {"name": "MomentumTeacher", "momentun": 0.9}, where="model.teacher")
    msg = str(ei.value)
    assert "'model.teacher.momentun'" in msg
    assert "did you mean: momentum" in msg


def test_extra_kwargs_only_if_accepted(widgets):
    w = build_component(OBJECTIVE_REGISTRY, {"name": "_TestWidget", "size": 1}, where="w", hidden_size=64, vocab_size=100, word_embeddings=object())
    assert w.hidden_size == 64  # accepted: passed
    # vocab_size / word_embeddings are not accepted: silently left out (no TypeError)


def test_config_kwarg_wins_over_extra(widgets):
    w = build_component(OBJECTIVE_REGISTRY, {"name": "_TestWidget", "size": 1, "hidden_size": 7}, where="w", hidden_size=64)
    assert w.hidden_size == 7


def test_var_kwargs_component_receives_all_extras(widgets):
    w = build_component(OBJECTIVE_REGISTRY, {"name": "_TestKwWidget", "size": 2, "anything": 1}, where="w", vocab_size=9)
    assert w.size == 2
    assert w.kwargs == {"anything": 1, "vocab_size": 9}


def test_from_config_factory_is_used(widgets):
    w = build_component(OBJECTIVE_REGISTRY, {"name": "_TestFactoryWidget", "size": 3}, where="w", scale=5, other=1)
    assert isinstance(w, _FactoryWidget) and w.inner == 15
    with pytest.raises(ComponentError) as ei:
        build_component(OBJECTIVE_REGISTRY, {"name": "_TestFactoryWidget", "size": 3, "scal": 5}, where="w")
    assert "'w.scal'" in str(ei.value) and "scale" in str(ei.value)


def test_missing_required_argument_is_component_error(widgets):
    with pytest.raises(ComponentError) as ei:
        build_component(OBJECTIVE_REGISTRY, {"name": "_TestWidget"}, where="model.objectives.w")
    assert "_TestWidget" in str(ei.value) and "model.objectives.w" in str(ei.value)


def test_none_node_builds_nothing():
    assert build_component(OBJECTIVE_REGISTRY, None, where="model.objectives.mlm") is None


@pytest.mark.parametrize("node", [{"size": 1}, "ITCLoss", 3])
def test_node_without_name_is_error(node):
    with pytest.raises(ComponentError) as ei:
        build_component(OBJECTIVE_REGISTRY, node, where="model.objectives.x")
    assert "model.objectives.x" in str(ei.value) and "name" in str(ei.value)


def test_build_unknown_name_via_build_component():
    with pytest.raises(ComponentError) as ei:
        build_component(OBJECTIVE_REGISTRY, {"name": "ITCLos"}, where="model.objectives.itc")
    msg = str(ei.value)
    assert "model.objectives.itc" in msg and "ITCLoss" in msg


def test_builtin_miner_builds():
    _load_builtins()
    m = build_component(MINER_REGISTRY, {"name": "RandomNegativeMiner"}, where="model.objectives.itm.miner")
    assert type(m).__name__ == "RandomNegativeMiner"


class _PlainModule(torch.nn.Module):
    """A "simple plugin": an nn.Module that keeps nn.Module's own constructor."""

    def forward(self, x):
        return x


def test_extras_not_forced_on_module_without_own_init():
    _load_builtins()
    TEACHER_REGISTRY.register(_PlainModule, name="_TestPlainTeacher")
    try:
        t = build_component(TEACHER_REGISTRY, {"name": "_TestPlainTeacher"}, where="model.teacher", embed_dim=16)
        assert isinstance(t, _PlainModule)
    finally:
        TEACHER_REGISTRY.unregister("_TestPlainTeacher")


def test_builtin_miner_ignores_unaccepted_extra():
    m = build_component(MINER_REGISTRY, {"name": "RandomNegativeMiner"}, where="model.objectives.itm.miner", hidden_size=8)
    assert type(m).__name__ == "RandomNegativeMiner"


# ---------------------------------------------------------------------- the Registry class
def test_builtins_are_registered_where_defined_and_attributed_to_albef():
    _load_builtins()
    from albef.modeling.objectives.itc import ITCLoss

    assert OBJECTIVE_REGISTRY.get("ITCLoss") is ITCLoss
    assert OBJECTIVE_REGISTRY.provider("ITCLoss") == BUILTIN_PROVIDER
    for family, reg in ALL_REGISTRIES.items():
        for name, obj in reg:
            if obj.__module__.startswith("albef."):
                assert reg.provider(name) == BUILTIN_PROVIDER, (family, name)


def test_a_new_registry_lists_itself_and_registers_by_decorator():
    reg = Registry("_TEST_FAMILY", "things for this test")
    try:
        assert ALL_REGISTRIES["_test_family"] is reg and reg.doc == "things for this test"

        @reg.register()
        class Thing:
            pass

        @reg.register(name="Renamed")
        def make_thing():
            return Thing()

        assert reg.get("Thing") is Thing and reg.get("Renamed") is make_thing and "make_thing" not in reg
        assert reg.register(Thing) is Thing  # the same object again: a no-op, not a clash
        assert reg.provider("Thing") == f"module '{__name__}' (registered directly)"
        assert sorted(n for n, _ in reg) == ["Renamed", "Thing"] and len(reg) == 2
        with pytest.raises(RegistrationError, match="already exists"):
            Registry("_TEST_FAMILY")
    finally:
        del ALL_REGISTRIES["_test_family"]


def test_a_name_registered_twice_is_an_error_naming_both_providers():
    reg = Registry("_TEST_CLASH")
    try:
        reg.register(_Widget, name="W")
        with pytest.raises(RegistrationError) as ei:
            reg.register(_KwWidget, name="W")
        msg = str(ei.value)
        assert "_test_clash component 'W' is registered twice" in msg and msg.count(f"module '{__name__}'") == 2
        assert reg.get("W") is _Widget  # the first one stays
        assert reg.unregister("W") is _Widget and "W" not in reg
        with pytest.raises(KeyError, match="No object named 'W'"):
            reg.unregister("W")
    finally:
        del ALL_REGISTRIES["_test_clash"]


def test_importing_the_datasets_package_registers_every_built_in_dataset():
    """A family's package registers its built-ins on import, the shard reader included (its
    file helpers live in albef.data.files, outside the package, so no import circle keeps it out)."""
    code = ("import albef.data.datasets\nfrom albef.registry import DATASET_REGISTRY\n"
            "print(sorted(name for name, _ in DATASET_REGISTRY))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, ALBEF_PLUGINS="none"))
    assert out.returncode == 0, out.stderr
    names = eval(out.stdout)
    assert {"PretrainJSON", "WebDatasetPretrain", "RetrievalEvalJSON", "VisualEntailmentJSON", "NLVR2JSON", "VQAJSON",
            "GroundingEvalJSON"} <= set(names)
