"""Plugins (albef.plugins): built-ins registered where they are defined, in-process plugins,
discovery of real (unpublished) distributions through the ``albef`` entry-point group (a
plugin module registers with the registries' decorators when imported), the ALBEF_PLUGINS
switch, and the errors for clashes, import failures and unknown registries."""
from __future__ import annotations

import importlib
import json
import os
import sys
import textwrap

import pytest

from conftest import REPO, TINY, run_cli
import albef.engine.defaults  # noqa: F401  (imports every family: the built-ins register)
from albef.plugins import PluginError, component_origins, load_plugins, register_plugin, unregister_plugin
from albef.plugins import manager
from albef.registry import ALL_REGISTRIES, MINER_REGISTRY, OBJECTIVE_REGISTRY, ComponentError, build_component, get_component, registered_names

BUILTIN = "albef (built-in)"


# ---------------------------------------------------------------------- fake distributions
def make_dist(root, dist_name: str, version: str, entry_points: dict[str, str], modules: dict[str, str]) -> str:
    """Write ``<root>/<dist>-<version>.dist-info`` (METADATA + entry_points.txt) and the modules."""
    di = root / f"{dist_name.replace('-', '_')}-{version}.dist-info"
    di.mkdir(parents=True)
    (di / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: {version}\n")
    (di / "entry_points.txt").write_text("[albef]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    for mod, src in modules.items():
        (root / f"{mod}.py").write_text(textwrap.dedent(src))
    return str(root)


def objective_module(cls_name: str) -> str:
    """Source of a plugin module registering a tiny objective: pulls the paired features together."""
    return f"""
        import torch
        from albef.modeling.objectives.base import Objective
        from albef.registry import OBJECTIVE_REGISTRY

        @OBJECTIVE_REGISTRY.register()
        class {cls_name}(Objective):
            def __init__(self, weight: float = 1.0, scale: float = 1.0):
                super().__init__(weight)
                self.scale = scale

            def forward(self, ctx, alpha=None):
                return self.scale * (1 - (ctx.image_feat * ctx.text_feat).sum(-1)).mean()
        """


@pytest.fixture()
def fresh_plugins(monkeypatch):
    """Plugin state reset before and after (the next lookup re-registers built-ins and plugins);
    sys.path, sys.modules and ALBEF_PLUGINS restored."""
    saved_path, saved_mods = list(sys.path), set(sys.modules)
    monkeypatch.delenv("ALBEF_PLUGINS", raising=False)
    manager._reset_for_tests()
    yield monkeypatch
    monkeypatch.delenv("ALBEF_PLUGINS", raising=False)
    manager._reset_for_tests()
    sys.path[:] = saved_path
    for m in set(sys.modules) - saved_mods:
        if m.startswith("albefplug_"):
            del sys.modules[m]
    load_plugins()


# ---------------------------------------------------------------------- built-ins and in-process
def test_builtins_register_where_defined_as_albef():
    load_plugins()
    origins = component_origins()
    assert set(origins) == set(ALL_REGISTRIES)
    for fam, names in {"objective": ["ITCLoss", "ITMLoss", "MLMLoss"], "miner": ["ContrastiveHardNegativeMiner"], "teacher": ["MomentumTeacher", "NoTeacher"], "dataset": ["PretrainJSON"], "head": ["ITMHead"], "meta_arch": ["ALBEF"], "vision_encoder": ["TimmViT"], "text_encoder": ["BertTextEncoder"], "fusion": ["CrossAttentionFusion"]}.items():
        for n in names:
            assert origins[fam][n] == BUILTIN, (fam, n)


def test_load_plugins_is_idempotent():
    pm = load_plugins()
    before = {f: registered_names(r) for f, r in ALL_REGISTRIES.items()}
    assert load_plugins() is pm
    assert {f: registered_names(r) for f, r in ALL_REGISTRIES.items()} == before


class _LabMiner:
    def __init__(self, k: int = 1):
        self.k = k


def _lab_plugin():
    MINER_REGISTRY.register(_LabMiner, name="LabMiner")

    @MINER_REGISTRY.register()
    class LabDecoratedMiner(_LabMiner):
        pass


def test_in_process_plugin_registers_and_unregisters():
    register_plugin(_lab_plugin, name="lab")
    try:
        m = build_component(MINER_REGISTRY, {"name": "LabMiner", "k": 3}, where="model.objectives.itm.miner")
        assert isinstance(m, _LabMiner) and m.k == 3
        assert component_origins()["miner"]["LabMiner"] == "plugin 'lab' (registered in-process)"
        assert component_origins()["miner"]["LabDecoratedMiner"] == "plugin 'lab' (registered in-process)"
        with pytest.raises(PluginError, match="already registered"):
            register_plugin(_lab_plugin, name="lab")
    finally:
        unregister_plugin("lab")
    assert "LabDecoratedMiner" not in registered_names(MINER_REGISTRY)
    assert "LabMiner" not in registered_names(MINER_REGISTRY)
    with pytest.raises(ComponentError, match="Unknown MINER component 'LabMiner'"):
        get_component(MINER_REGISTRY, "LabMiner")


def test_in_process_plugin_clashing_with_builtin_is_refused_and_rolled_back():
    def clash():
        OBJECTIVE_REGISTRY.register(_LabMiner, name="FreshName")
        OBJECTIVE_REGISTRY.register(_LabMiner, name="ITCLoss")

    with pytest.raises(PluginError) as ei:
        register_plugin(clash, name="clashy")
    msg = str(ei.value)
    assert "'ITCLoss'" in msg and BUILTIN in msg and "plugin 'clashy'" in msg
    assert "FreshName" not in registered_names(OBJECTIVE_REGISTRY)  # nothing half-registered
    assert get_component(OBJECTIVE_REGISTRY, "ITCLoss").__module__ == "albef.modeling.objectives.itc"
    assert load_plugins().get_plugin("clashy") is None


# ---------------------------------------------------------------------- installed distributions
def test_dist_info_plugin_is_discovered_and_trains(fresh_plugins, tmp_path, tiny_cfg):
    root = make_dist(tmp_path / "site", "albef-toy", "0.3", {"toy": "albefplug_toy"}, {"albefplug_toy": objective_module("ToyAlignLoss")})
    sys.path.insert(0, root)
    load_plugins()
    assert component_origins()["objective"]["ToyAlignLoss"] == "plugin 'toy' (albef-toy 0.3)"
    from albef.engine.defaults import Trainer

    cfg = tiny_cfg("train.max_iter=2", "train.checkpoint_period=0", "data.test=null", "model.objectives.toy={name: ToyAlignLoss, scale: 2.0}")
    Trainer(cfg).train()
    with open(os.path.join(cfg.output_dir, "metrics.json")) as f:
        rows = [json.loads(line) for line in f]
    keys = {k for r in rows for k in r}
    assert {"loss_toy", "loss_itc", "loss_itm", "loss_mlm"} <= keys
    assert all(r["loss_toy"] > 0 for r in rows if "loss_toy" in r)


def test_env_var_none_loads_no_plugin(fresh_plugins, tmp_path):
    sys.path.insert(0, make_dist(tmp_path / "site", "albef-toy", "0.3", {"toy": "albefplug_toy2"}, {"albefplug_toy2": objective_module("ToyAlignLoss2")}))
    fresh_plugins.setenv("ALBEF_PLUGINS", "none")
    with pytest.raises(ComponentError) as ei:
        get_component(OBJECTIVE_REGISTRY, "ToyAlignLoss2", where="model.objectives.toy")
    listed = str(ei.value).split("Registered", 1)[1]
    assert "ITCLoss" in listed and "ToyAlignLoss2" not in listed


def test_env_var_selects_plugins_and_rejects_unknown_names(fresh_plugins, tmp_path):
    site = tmp_path / "site"
    make_dist(site, "albef-a", "1.0", {"plug_a": "albefplug_a"}, {"albefplug_a": objective_module("LossA")})
    make_dist(site, "albef-b", "1.0", {"plug_b": "albefplug_b"}, {"albefplug_b": objective_module("LossB")})
    sys.path.insert(0, str(site))
    fresh_plugins.setenv("ALBEF_PLUGINS", "plug_b")
    names = registered_names(OBJECTIVE_REGISTRY)
    assert "LossB" in names and "LossA" not in names
    manager._reset_for_tests()
    fresh_plugins.setenv("ALBEF_PLUGINS", "plug_b,plug_c")
    with pytest.raises(PluginError) as ei:
        load_plugins()
    assert "plug_c" in str(ei.value) and "plug_a" in str(ei.value) and "plug_b" in str(ei.value)


def test_plugin_that_fails_to_import_is_an_error_naming_it(fresh_plugins, tmp_path):
    # registers one component, then fails: the component must not stay behind
    src = textwrap.dedent(objective_module("HalfLoss")) + "import albefplug_missing_dependency_xyz\n"
    sys.path.insert(0, make_dist(tmp_path / "site", "albef-broken", "2.1", {"broken": "albefplug_broken"}, {"albefplug_broken": src}))
    for _ in range(2):  # not a one-off: a second lookup fails the same way instead of going on without it
        with pytest.raises(PluginError) as ei:
            get_component(OBJECTIVE_REGISTRY, "ITCLoss")
        msg = str(ei.value)
        assert "'broken'" in msg and "albef-broken 2.1" in msg and "albefplug_broken" in msg
        assert "ModuleNotFoundError" in msg and "albefplug_missing_dependency_xyz" in msg
    # A failed load registers nothing, and leaves the built-ins as they were.
    assert "HalfLoss" not in OBJECTIVE_REGISTRY
    assert OBJECTIVE_REGISTRY.provider("ITCLoss") == BUILTIN


def test_failed_plugin_loads_afresh_once_fixed(fresh_plugins, tmp_path):
    """Its modules are forgotten with its components, so the next load imports (and registers) again."""
    site = tmp_path / "site"
    make_dist(site, "albef-later", "1.0", {"later": "albefplug_later"}, {
        "albefplug_later": "import albefplug_later_losses\nimport albefplug_later_dep\n",
        "albefplug_later_losses": objective_module("LaterLoss"),
    })
    sys.path.insert(0, str(site))
    with pytest.raises(PluginError, match="albefplug_later_dep"):
        load_plugins()
    assert "LaterLoss" not in OBJECTIVE_REGISTRY
    (site / "albefplug_later_dep.py").write_text("")  # the missing dependency installed
    importlib.invalidate_caches()
    load_plugins()
    assert component_origins()["objective"]["LaterLoss"] == "plugin 'later' (albef-later 1.0)"


def test_two_plugins_registering_one_name_is_an_error_naming_both(fresh_plugins, tmp_path):
    site = tmp_path / "site"
    make_dist(site, "albef-one", "1.0", {"one": "albefplug_one"}, {"albefplug_one": objective_module("SharedLoss")})
    make_dist(site, "albef-two", "1.0", {"two": "albefplug_two"}, {"albefplug_two": objective_module("SharedLoss")})
    sys.path.insert(0, str(site))
    with pytest.raises(PluginError) as ei:
        load_plugins()
    msg = str(ei.value)
    assert "'SharedLoss'" in msg and "plugin 'one' (albef-one 1.0)" in msg and "plugin 'two' (albef-two 1.0)" in msg


def test_two_distributions_declaring_one_plugin_name_is_an_error(fresh_plugins, tmp_path):
    site = tmp_path / "site"
    make_dist(site, "albef-first", "1.0", {"same": "albefplug_first"}, {"albefplug_first": objective_module("FirstLoss")})
    make_dist(site, "albef-second", "1.0", {"same": "albefplug_second"}, {"albefplug_second": objective_module("SecondLoss")})
    sys.path.insert(0, str(site))
    with pytest.raises(PluginError) as ei:
        load_plugins()
    assert "'same'" in str(ei.value) and "albef-first 1.0" in str(ei.value) and "albef-second 1.0" in str(ei.value)


def test_plugin_with_misspelt_registry_is_an_error(fresh_plugins, tmp_path):
    src = """
        from albef.registry import OBJECTIVES_REGISTRY  # one S too many

        @OBJECTIVES_REGISTRY.register()
        class TypoLoss:
            pass
        """
    sys.path.insert(0, make_dist(tmp_path / "site", "albef-typo", "1.0", {"typo": "albefplug_typo"}, {"albefplug_typo": src}))
    with pytest.raises(PluginError, match="albef plugin 'typo'.*OBJECTIVES_REGISTRY"):
        load_plugins()


# ---------------------------------------------------------------------- the command line
@pytest.mark.slow
def test_cli_lists_components_and_trains_with_a_discovered_plugin(synthetic_root, tmp_path):
    site = make_dist(tmp_path / "site", "albef-toy", "0.3", {"toy": "albefplug_cli"}, {"albefplug_cli": objective_module("CliToyLoss")})
    env = {"PYTHONPATH": os.pathsep.join([site, os.environ.get("PYTHONPATH", "")])}
    r = run_cli(["--list-components"], env=env)
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if "CliToyLoss" in l)
    assert "plugin 'toy' (albef-toy 0.3)" in line
    assert any("ITCLoss" in l and BUILTIN in l for l in r.stdout.splitlines())

    out = str(tmp_path / "run")
    args = ["--config-file", TINY, f"data.synthetic.root={synthetic_root}", f"output_dir={out}", "train.max_iter=2", "data.test=null", "model.objectives.toy={name: CliToyLoss}"]
    r = run_cli(args, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    with open(os.path.join(out, "metrics.json")) as f:
        assert any("loss_toy" in json.loads(line) for line in f)
    # "Uninstalled" (not on the path): the same override is an error listing the registered objectives.
    r = run_cli(args[:-1] + [f"output_dir={tmp_path / 'run2'}", "model.objectives.toy={name: CliToyLoss}"])
    assert r.returncode == 2
    assert "Unknown OBJECTIVE component 'CliToyLoss'" in r.stderr and "model.objectives.toy" in r.stderr
    assert "ITCLoss, ITMLoss, MLMLoss" in r.stderr


@pytest.mark.slow
def test_cli_reports_a_broken_plugin_cleanly(tmp_path):
    site = make_dist(tmp_path / "site", "albef-broken", "2.1", {"broken": "albefplug_broken_cli"}, {"albefplug_broken_cli": "raise RuntimeError('boom at import')\n"})
    r = run_cli(["--list-components"], env={"PYTHONPATH": site})
    assert r.returncode == 2
    assert "albef plugin 'broken'" in r.stderr and "RuntimeError: boom at import" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_spawned_processes_load_the_plugins(synthetic_root, tmp_path):
    """--num-gpus 2 spawns fresh interpreters; each must discover the plugin by itself."""
    site = make_dist(tmp_path / "site", "albef-toy", "0.3", {"toy": "albefplug_spawn"}, {"albefplug_spawn": objective_module("SpawnToyLoss")})
    out = str(tmp_path / "run")
    args = ["--num-gpus", "2", "--config-file", TINY, f"data.synthetic.root={synthetic_root}", f"output_dir={out}", "train.max_iter=2", "train.batch_size=4", "model.teacher.queue_size=16", "data.test=null", "model.objectives.toy={name: SpawnToyLoss}"]
    r = run_cli(args, env={"PYTHONPATH": site})
    assert r.returncode == 0, r.stderr[-2000:]
    with open(os.path.join(out, "metrics.json")) as f:
        assert any("loss_toy" in json.loads(line) for line in f)


def test_env_var_none_skips_even_a_broken_install(fresh_plugins, tmp_path):
    """ALBEF_PLUGINS=none is the way around a broken plugin install: nothing is even discovered."""
    site = tmp_path / "site"
    make_dist(site, "albef-first", "1.0", {"same": "albefplug_first2"}, {"albefplug_first2": "raise RuntimeError('never imported')\n"})
    make_dist(site, "albef-second", "1.0", {"same": "albefplug_second2"}, {"albefplug_second2": "raise RuntimeError('never imported')\n"})
    sys.path.insert(0, str(site))
    fresh_plugins.setenv("ALBEF_PLUGINS", "none")
    assert get_component(OBJECTIVE_REGISTRY, "ITCLoss").__name__ == "ITCLoss"


def test_plugin_may_look_up_builtins_while_it_is_imported(fresh_plugins, tmp_path):
    src = """
        import albef.modeling.objectives  # the built-ins register when their package is imported
        from albef.registry import OBJECTIVE_REGISTRY, get_component

        ITCLoss = get_component(OBJECTIVE_REGISTRY, "ITCLoss")  # at import time

        @OBJECTIVE_REGISTRY.register()
        class ScaledITCLoss(ITCLoss):
            pass
        """
    sys.path.insert(0, make_dist(tmp_path / "site", "albef-sub", "1.0", {"sub": "albefplug_sub"}, {"albefplug_sub": src}))
    cls = get_component(OBJECTIVE_REGISTRY, "ScaledITCLoss")
    assert cls.__mro__[1] is get_component(OBJECTIVE_REGISTRY, "ITCLoss")
    assert OBJECTIVE_REGISTRY.provider("ScaledITCLoss") == "plugin 'sub' (albef-sub 1.0)"
    assert OBJECTIVE_REGISTRY.provider("ITCLoss") == BUILTIN


def test_plugin_written_for_the_removed_hooks_is_told_the_new_way(fresh_plugins, tmp_path):
    src = """
        from albef.plugins import hookimpl

        @hookimpl
        def albef_register_objectives(register):
            pass
        """
    sys.path.insert(0, make_dist(tmp_path / "site", "albef-old", "1.0", {"old": "albefplug_old"}, {"albefplug_old": src}))
    with pytest.raises(PluginError) as ei:
        load_plugins()
    msg = str(ei.value)
    assert "albef plugin 'old'" in msg and "albef-old 1.0" in msg and "@OBJECTIVE_REGISTRY.register()" in msg


def test_in_process_plugin_by_module_name(fresh_plugins, tmp_path):
    (tmp_path / "albefplug_inproc.py").write_text(textwrap.dedent(objective_module("InProcLoss")))
    sys.path.insert(0, str(tmp_path))
    for _ in range(2):  # unregistering forgets the module: registering again imports it afresh
        register_plugin("albefplug_inproc", name="inproc")
        assert component_origins()["objective"]["InProcLoss"] == "plugin 'inproc' (registered in-process)"
        unregister_plugin("inproc")
        assert "InProcLoss" not in OBJECTIVE_REGISTRY and "albefplug_inproc" not in sys.modules


def test_builtins_cannot_be_unregistered():
    with pytest.raises(PluginError, match="cannot be unregistered"):
        unregister_plugin("albef")
    assert "ITCLoss" in registered_names(OBJECTIVE_REGISTRY)
