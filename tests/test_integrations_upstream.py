"""The adapters run through the real upstream modules of vLLM 0.33.0, SGLang 0.5.23 and
vllm-ascend 0.23.0 (with the vLLM it is built for, 0.23.0).

build.sh installs the wheels without their dependencies, with the few light libraries their
modules import: vLLM and SGLang into ``.venv/upstream`` (override: FLASHLB_UPSTREAM),
vllm-ascend and its vLLM into ``.venv/upstream-ascend`` (override: FLASHLB_UPSTREAM_ASCEND).
vllm-ascend's newest release, 0.23.0.post1, is an sdist only (its build needs CANN); its Python
code, EPLB included, is the 0.23.0 wheel's. FLASHLB_VLLM_ASCEND_SRC, a folder holding
``vllm_ascend/`` (e.g. a checkout of its main branch), runs the vllm-ascend test on those sources
instead of the release's, with the release's vLLM. vLLM's ``tests/distributed/test_eplb_algo.py``
is read from ``~/.cache/flashlb/vllm-tests`` or ``<nearest ancestor>/cache/vllm-tests``
(override: FLASHLB_VLLM_TESTS). Tests that need what is absent skip with one line.

Each check runs in its own interpreter, so upstream imports and the patches under test never
reach other tests. Stand-in modules are injected only for imports the code under test does
not use, and only those that need an accelerator or a server stack (STANDINS below).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _cache_dir(env: str, name: str) -> Path | None:
    if os.environ.get(env):
        p = Path(os.environ[env])
        return p if p.exists() else None
    # The same cache folder as kernels/check_headers.sh, then a cache beside a parent checkout.
    for p in [Path.home() / ".cache" / "flashlb" / name] + [d / "cache" / name for d in REPO.parents]:
        if p.exists():
            return p
    return None


UPSTREAM = Path(os.environ.get("FLASHLB_UPSTREAM", REPO / ".venv" / "upstream"))
UPSTREAM_ASCEND = Path(os.environ.get("FLASHLB_UPSTREAM_ASCEND", REPO / ".venv" / "upstream-ascend"))
ASCEND_SRC = Path(os.environ["FLASHLB_VLLM_ASCEND_SRC"]) if os.environ.get("FLASHLB_VLLM_ASCEND_SRC") else None
VLLM_TESTS = _cache_dir("FLASHLB_VLLM_TESTS", "vllm-tests")

# module -> why a stand-in is enough (nothing the code under test calls comes from it)
STANDINS = {
    "vllm": {
        # CUDA/ROCm/XPU communicators; imported by eplb_state for elastic EP process groups
        "vllm.distributed.stateless_coordinator": "GPU communicators",
        "transformers": "model and tokenizer loading",
        "huggingface_hub": "model downloads",
        "aiohttp": "HTTP serving",
        "openai": "OpenAI-compatible server types",
        "openai_harmony": "chat format of the OpenAI server",
    },
    "sglang": {
        "triton": "GPU kernels",
        "starlette": "HTTP serving",
        "aiohttp": "HTTP serving",
        "IPython": "notebook helpers",
    },
    # with vLLM 0.23.0, whose config also reads the installed transformers' version (so
    # build.sh installs it, for its metadata)
    "vllm_ascend": {
        "vllm.distributed.stateless_coordinator": "GPU communicators",
        "transformers": "model and tokenizer loading",
        "huggingface_hub": "model downloads",
        "gguf": "GGUF model files",
        "aiohttp": "HTTP serving",
        "openai": "OpenAI-compatible server types",
        "openai_harmony": "chat format of the OpenAI server",
        "torch_npu": "the NPU runtime",
        # imported at module level by the policies flashlb replaces (types 2 and 3)
        "numba": "compiles the replaced type-3 policy",
        "scipy": "used by the replaced type-3 policy",
        "vllm_ascend.distributed.parallel_state": "NPU process groups",
        # GPU MoE kernels; vllm-ascend's eplb_utils imports one helper from there that only
        # the worker's IPC packing (not exercised) calls
        "vllm.model_executor.layers.fused_moe": "GPU MoE kernels",
    },
}

PRELUDE = r'''
import importlib.abc, importlib.machinery, sys, types, typing

def _call(self, *args, **kwargs):
    # used as a decorator (with or without arguments): hand the function back unchanged
    return args[0] if len(args) == 1 and callable(args[0]) and not kwargs else self

_BODY = {"__init__": lambda self, *a, **k: None, "__call__": _call}

class _Anything(type):
    """Attributes of a stand-in: classes that accept anything."""
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything(name, (), dict(_BODY))
    def __getitem__(cls, item):
        return cls
    def __or__(cls, other):
        return typing.Union[cls, other]
    def __ror__(cls, other):
        return typing.Union[other, cls]

class _StandIn(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _Anything(name, (), dict(_BODY))
        setattr(self, name, value)
        return value

class _StandIns(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, names):
        self.names = set(names)
    def find_spec(self, name, path=None, target=None):
        if any(name == n or name.startswith(n + ".") for n in self.names):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None
    def create_module(self, spec):
        return _StandIn(spec.name)
    def exec_module(self, module):
        module.__path__ = []

sys.meta_path.insert(0, _StandIns(STANDIN_NAMES))
'''


def _need(stack: str) -> None:
    marker = {"vllm": (UPSTREAM, "vllm/distributed/eplb/policy/abstract.py"),
              "sglang": (UPSTREAM, "sglang/srt/eplb/expert_location.py"),
              "vllm_ascend": (UPSTREAM_ASCEND, "vllm_ascend/eplb/core/policy/policy_factory.py")}
    folder, path = marker[stack]
    if not (folder / path).exists():
        pytest.skip(f"{stack} wheel not installed in {folder} (build.sh installs it when the registry is reachable)")
    if stack == "vllm_ascend" and ASCEND_SRC is not None and not (ASCEND_SRC / path).exists():
        pytest.skip(f"FLASHLB_VLLM_ASCEND_SRC={ASCEND_SRC} holds no {path}")


def run_upstream(stacks: list[str], body: str, args: list[str] | None = None, timeout: int = 600,
                 context: str = ""):
    """Run ``context`` then ``body`` in a fresh interpreter with the upstream code importable;
    fail on error, and unless the body ran to its end (it prints "ok")."""
    for s in stacks:
        _need(s)
    names = sorted({n for s in stacks for n in STANDINS[s]})
    if "vllm_ascend" in stacks:  # vllm-ascend runs with the vLLM it is built for, not with 0.33
        assert stacks == ["vllm_ascend"], "vllm-ascend brings its own vLLM"
        paths = [str(REPO)] + ([str(ASCEND_SRC)] if ASCEND_SRC else []) + [str(UPSTREAM_ASCEND)]
    else:
        paths = [str(REPO), str(UPSTREAM)]
    script = (f"STANDIN_NAMES = {names!r}\n" + PRELUDE + textwrap.dedent(context) + "\n"
              + textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths), VLLM_LOGGING_LEVEL="ERROR",
               VLLM_PLUGINS="")
    r = subprocess.run([sys.executable, "-c", script, *(args or [])], capture_output=True,
                       text=True, env=env, timeout=timeout, cwd=REPO)
    assert r.returncode == 0 and r.stdout.rstrip().endswith("ok"), \
        f"upstream check failed:\n{r.stdout[-4000:]}\n{r.stderr[-6000:]}"
    return r.stdout


# --------------------------------------------------------------------------- vLLM

def test_vllm_policy_is_registered_and_accepted_by_vllm_config():
    out = run_upstream(["vllm"], '''
        import json, typing
        import torch
        from vllm.config.parallel import EPLBConfig, ParallelConfig
        from vllm.distributed.eplb import policy as vpol
        from flashlb.integrations import vllm as fv

        try:
            EPLBConfig(policy="flashlb", use_async=False)
        except Exception as exc:
            assert "policy" in str(exc)
        else:
            raise AssertionError("vLLM accepted an unknown policy before registration")
        cls = fv.register()
        fv.register()                                  # idempotent
        assert cls is fv.FlashLBEplbPolicy and issubclass(cls, vpol.AbstractEplbPolicy)
        assert vpol.EPLB_POLICIES["flashlb"] is cls and vpol.EPLB_POLICIES["default"] is vpol.DefaultEplbPolicy
        import vllm.config.parallel as vcfg
        # the invariant vLLM asserts at import: registry keys == option values
        assert set(vpol.EPLB_POLICIES) == set(typing.get_args(vcfg.EPLBPolicyOption))
        cfg = EPLBConfig(policy="flashlb", use_async=False, num_redundant_experts=32)
        assert cfg.policy == "flashlb"
        EPLBConfig(policy="default")                   # the default still works
        try:
            EPLBConfig(policy="flashlb")               # async worker on: vLLM refuses
        except Exception as exc:
            assert "Async EPLB is only supported with the default policy" in str(exc)
        else:
            raise AssertionError("async EPLB accepted a non-default policy")
        try:
            EPLBConfig(policy="nonsense", use_async=False)
        except Exception:
            pass
        else:
            raise AssertionError("unknown policy accepted")
        # what `--eplb-config '{...}'` goes through
        from pydantic import TypeAdapter
        parsed = TypeAdapter(EPLBConfig).validate_python(json.loads('{"policy": "flashlb", "use_async": false}'))
        assert parsed.policy == "flashlb"
        # the lookup EplbState does
        assert vpol.EPLB_POLICIES[cfg.policy] is cls
        print("ok")
    ''')
    assert "ok" in out


def test_vllm_entry_point_plugin_registers(tmp_path):
    """The plugin function vLLM's loader calls (entry point group vllm.general_plugins)."""
    out = run_upstream(["vllm"], '''
        import tomllib
        from pathlib import Path
        meta = tomllib.loads(Path("pyproject.toml").read_text())
        ep = meta["project"]["entry-points"]["vllm.general_plugins"]["flashlb"]
        assert ep == "flashlb.integrations.vllm:plugin", ep
        module, func = ep.split(":")
        import importlib
        getattr(importlib.import_module(module), func)()
        from vllm.distributed.eplb.policy import EPLB_POLICIES
        from vllm.config.parallel import EPLBConfig
        assert "flashlb" in EPLB_POLICIES and EPLBConfig(policy="flashlb", use_async=False).policy == "flashlb"
        print("ok")
    ''')
    assert "ok" in out


def test_vllm_maps_commit_through_eplb_state():
    """vLLM's own log2phy construction and map commit take the policy's output, padded to
    vLLM's width, including elastic EP (old maps with -1, other widths) and groups that do
    not divide among nodes."""
    out = run_upstream(["vllm"], '''
        import torch
        from types import SimpleNamespace
        from vllm.distributed.eplb import eplb_state as es
        from flashlb import Placement
        from flashlb.integrations.vllm import FlashLBEplbPolicy as Pol

        es.PIN_MEMORY = False        # pinned host memory needs an accelerator; this host has none
        g = torch.Generator().manual_seed(0)
        L, N, P, D = 3, 16, 24, 4
        load = (torch.rand(L, N, generator=g) ** 3 * 1000).to(torch.int64)   # vLLM's load window: int64 counts
        phy = Pol.rebalance_experts(load, P, 4, 2, D)
        assert phy.device.type == "cpu" and phy.dtype == torch.int64 and phy.shape == (L, P)
        Placement.from_phy2log(phy, N, D).validate()

        # the commit of a rearrangement: buffers as EplbModelState holds them, X = max width
        X = P - N + 1
        state = SimpleNamespace(
            physical_to_logical_map=torch.zeros(L, P, dtype=torch.int64),
            physical_to_logical_map_buffer=torch.zeros(L, 2 * P, dtype=torch.int64),
            logical_to_physical_map=torch.full((L, N, X), -1, dtype=torch.int64),
            logical_replica_count=torch.zeros(L, N, dtype=torch.int64))
        es._commit_eplb_maps(state, phy)
        assert torch.equal(state.physical_to_logical_map, phy)
        log2phy, cnt = es.compute_logical_maps(phy, N)
        assert torch.equal(state.logical_replica_count, cnt)
        ours = Placement.from_phy2log(phy, N, D)
        assert torch.equal(cnt, ours.logcnt)
        R = ours.log2phy.shape[-1]
        assert torch.equal(state.logical_to_physical_map[..., :R], ours.log2phy)
        assert bool((state.logical_to_physical_map[..., R:] == -1).all())
        # per layer, as the async path commits
        phy2 = Pol.rebalance_experts(load.flip(-1), P, 4, 2, D, phy)
        es._commit_eplb_maps_for_layer(state, phy2[1], 1)
        assert torch.equal(state.physical_to_logical_map[1], phy2[1])

        # warm start: the map in service keeps experts in place where it can
        fresh = Pol.rebalance_experts(load.flip(-1), P, 4, 2, D)
        assert (phy2 != phy).sum() <= (fresh != phy).sum()

        # elastic EP, scale up 4 -> 6 ranks: new slots hold -1, map of the new width
        P6 = 36
        old_up = torch.cat([phy, torch.full((L, P6 - P), -1, dtype=torch.int64)], 1)
        up = Pol.rebalance_experts(load, P6, 4, 2, 6, old_up)
        assert up.shape == (L, P6)
        Placement.from_phy2log(up, N, 6).validate()
        state.physical_to_logical_map_buffer = torch.zeros(L, P6, dtype=torch.int64)
        state.logical_to_physical_map = torch.full((L, N, P6 - N + 1), -1, dtype=torch.int64)
        es._commit_eplb_maps(state, up)
        assert torch.equal(state.physical_to_logical_map, up)
        # scale down 6 -> 2 ranks: the old map is wider than the new one
        down = Pol.rebalance_experts(load, 16, 4, 2, 2, up)
        assert down.shape == (L, 16)
        Placement.from_phy2log(down, N, 2).validate()
        es._commit_eplb_maps(state, down)
        assert torch.equal(state.physical_to_logical_map, down)

        # groups that do not divide among nodes: global balancing, as vLLM's policy does
        g3 = Pol.rebalance_experts(load[:, :12], 16, 3, 2, 4)
        Placement.from_phy2log(g3, 12, 4).validate()
        ref = es.EPLB_POLICIES["default"].rebalance_experts(load[:, :12], 16, 3, 2, 4)
        assert ref.shape == g3.shape
        print("ok")
    ''')
    assert "ok" in out


def test_vllm_own_eplb_algo_tests_with_only_the_import_changed(tmp_path):
    """vLLM's tests/distributed/test_eplb_algo.py, its policy import pointed at flashlb.

    Expected to fail, both asserting what only vLLM's greedy produces:
    - test_basic_rebalance: the exact placement vLLM's greedy returns (flashlb places
      differently; that test's shape and count checks pass, the exact-map assertion does not).
    - test_extreme_weight_imbalance: the hot expert must get strictly more replicas than a
      cold one with 2 GPUs per node (hierarchical); vLLM gets there by putting two copies of
      the hot expert on one GPU (which then carries 2/3 of the load). flashlb never places an
      expert twice on a device, so the hot expert has 2 replicas and a cold one gets the spare.
    """
    if VLLM_TESTS is None or not (VLLM_TESTS / "test_eplb_algo.py").exists():
        pytest.skip("vLLM's test_eplb_algo.py is not cached (cache/vllm-tests); it ships in no wheel")
    _need("vllm")
    src = (VLLM_TESTS / "test_eplb_algo.py").read_text()
    line = "from vllm.distributed.eplb.policy.default import DefaultEplbPolicy"
    assert src.count(line) == 1, "vLLM's test no longer imports its policy the way this test rewrites"
    target = tmp_path / "test_eplb_algo_flashlb.py"
    target.write_text(src.replace(line, "from flashlb.integrations.vllm import FlashLBEplbPolicy as DefaultEplbPolicy"))
    report = tmp_path / "report.json"
    out = run_upstream(["vllm"], '''
        import json, sys, pytest
        class Collect:
            def __init__(self): self.outcomes = {}
            def pytest_runtest_logreport(self, report):
                if report.when == "call" or report.outcome != "passed":
                    self.outcomes[report.nodeid.split("::")[-1]] = report.outcome
        c = Collect()
        pytest.main(["-q", "-p", "no:cacheprovider", "-p", "no:randomly", sys.argv[1]], plugins=[c])
        open(sys.argv[2], "w").write(json.dumps(c.outcomes))
        print("ok")
    ''', [str(target), str(report)])
    outcomes = json.loads(report.read_text())
    expected_to_differ = {"test_basic_rebalance", "test_extreme_weight_imbalance"}
    failed = {k for k, v in outcomes.items() if v == "failed"}
    passed = {k for k, v in outcomes.items() if v == "passed"}
    assert failed == expected_to_differ, f"{outcomes}\n{out[-3000:]}"
    assert len(passed) >= 13, outcomes


# --------------------------------------------------------------------------- SGLang

SGLANG_CONTEXT = '''
    import torch
    from types import SimpleNamespace
    from sglang.srt.eplb import expert_location as el
    from sglang.srt.eplb import eplb_algorithms as algos

    def configure(init_expert_location, L, N, P, D, num_groups=None, nnodes=1, eplb_algorithm="auto",
                  dispatch="static"):
        """Server settings that the server's runtime context would publish. (Without an
        all-to-all backend SGLang keeps every replica as a dispatch candidate.)"""
        moe = SimpleNamespace(init_expert_location=init_expert_location, ep_num_redundant_experts=P - N,
                              ep_dispatch_algorithm=dispatch, moe_a2a_backend="none",
                              ep_join_mode="none", eplb_algorithm=eplb_algorithm)
        el.get_exec = lambda: SimpleNamespace(moe=moe)
        el.get_parallel = lambda: SimpleNamespace(ep_size=D, nnodes=nnodes, elastic_ep_initial_size=None, tp_size=D)
        el.get_device = lambda: SimpleNamespace(device="cpu")
        # the model's expert layout, which SGLang reads from the model class
        el.ModelConfigForExpertLocation.from_model_config = staticmethod(
            lambda model_config: el.ModelConfigForExpertLocation(num_layers=L, num_logical_experts=N, num_groups=num_groups))
'''


def test_sglang_loads_init_expert_location_files(tmp_path):
    """Every format we write for SGLang goes through its real loader and constructor."""
    out = run_upstream(["sglang"], context=SGLANG_CONTEXT, body='''
        import sys
        from pathlib import Path
        from flashlb import Placement
        from flashlb.integrations import sglang as fs

        tmp = Path(sys.argv[1])
        g = torch.Generator().manual_seed(1)
        L, N, P, D = 3, 16, 24, 4
        counts = torch.rand(5, L, N, generator=g) * 100
        for suffix in (".json", ".pt"):
            path = fs.write_init_expert_location(tmp / f"loc{suffix}", counts, P, P // D)
            configure(str(path), L, N, P, D)
            meta = el.compute_initial_expert_location_metadata(model_config=None, moe_ep_rank=1)
            ours = Placement.load(path, num_devices=D)
            assert torch.equal(meta.physical_to_logical_map_cpu, ours.phy2log), suffix
            assert torch.equal(meta.logical_to_all_physical_map_num_valid, ours.logcnt), suffix
            assert meta.num_local_physical_experts == P // D
            assert meta.logical_to_rank_dispatch_physical_map.shape == (L, N)
            # Placement.save writes the same file
            ours.save(tmp / f"again{suffix}")
            configure(str(tmp / f"again{suffix}"), L, N, P, D)
            again = el.compute_initial_expert_location_metadata(model_config=None, moe_ep_rank=0)
            assert torch.equal(again.physical_to_logical_map_cpu, ours.phy2log)
        print("ok")
    ''', args=[str(tmp_path)])
    assert "ok" in out


def test_sglang_dispatch_reaches_flashlb_after_install(tmp_path):
    """--eplb-algorithm flashlb through SGLang's own init_by_eplb; other names unchanged."""
    out = run_upstream(["sglang"], context=SGLANG_CONTEXT, body='''
        import json, sys
        from pathlib import Path
        from flashlb import Placement, plan
        from flashlb.integrations import sglang as fs

        g = torch.Generator().manual_seed(2)
        L, N, P, D = 2, 16, 24, 4
        counts = (torch.rand(4, L, N, generator=g) * 100).round()
        path = Path(sys.argv[1]) / "logical_count.json"
        path.write_text(json.dumps({"logical_count": counts.tolist()}))

        configure(str(path), L, N, P, D, num_groups=4, eplb_algorithm="flashlb", dispatch="dynamic")
        try:
            el.compute_initial_expert_location_metadata(model_config=None, moe_ep_rank=0)
        except KeyError:
            pass                                    # SGLang alone does not know the name
        else:
            raise AssertionError("flashlb reached before install")
        # SGLang's plugin loader runs what the entry point names, in every server process
        import tomllib
        ep = tomllib.loads(Path("pyproject.toml").read_text())["project"]["entry-points"]["sglang.srt.plugins"]["flashlb"]
        assert ep == "flashlb.integrations.sglang:plugin", ep
        from sglang.srt import plugins as sp
        import importlib
        sp.entry_points = lambda group: [SimpleNamespace(name="flashlb", value=ep, dist=None,
                                                         load=lambda: getattr(importlib.import_module(ep.split(":")[0]), ep.split(":")[1]))] \
            if group == sp.GENERAL_PLUGINS_GROUP else []
        sp.load_plugins()
        fs.install()                                # idempotent
        meta = el.compute_initial_expert_location_metadata(model_config=None, moe_ep_rank=0)
        want = plan(counts, P, D, num_groups=4, num_nodes=1)
        assert torch.equal(meta.physical_to_logical_map_cpu, want.phy2log)
        Placement.from_phy2log(meta.physical_to_logical_map_cpu, N, D).validate()

        # SGLang's own algorithms still answer their names, with their own results
        for name in ("deepseek", "deepseek_hierarchical"):
            configure(str(path), L, N, P, D, num_groups=4, eplb_algorithm=name, dispatch="dynamic")
            m = el.compute_initial_expert_location_metadata(model_config=None, moe_ep_rank=0)
            ref = algos.rebalance_experts._flashlb_original(
                tokens_per_expert=counts, num_physical_experts=P, num_local_physical_experts=P // D,
                num_groups=4, num_nodes=1, algorithm=algos.EplbAlgorithm[name])
            assert torch.equal(m.physical_to_logical_map_cpu, ref[0].cpu())
        # the adapter returns what SGLang's algorithms return: CPU int64, -1 padded
        got = fs.rebalance_experts(counts, P, P // D, 4, 1, algorithm=algos.EplbAlgorithm.deepseek)
        ref = algos.rebalance_experts(tokens_per_expert=counts, num_physical_experts=P,
                                      num_local_physical_experts=P // D, num_groups=4, num_nodes=1,
                                      algorithm=algos.EplbAlgorithm.deepseek)
        for a, b in zip(got, ref):
            assert a.device.type == b.device.type == "cpu" and a.dtype == b.dtype and a.dim() == b.dim()
        print("ok")
    ''', args=[str(tmp_path)])
    assert "ok" in out


# --------------------------------------------------------------------------- vllm-ascend

def test_vllm_ascend_factory_serves_slot_3_and_worker_accepts_tables():
    """The release's factory, worker and maps with the vLLM it is built for; the one plugin
    also registers the vLLM policy there (a vllm-ascend deployment loads the same entry point)."""
    out = run_upstream(["vllm_ascend"], '''
        import os, sys
        from pathlib import Path
        import torch
        import vllm, vllm_ascend
        assert vllm.__version__ == "0.23.0", vllm.__version__
        assert Path(vllm_ascend.__file__).parent.parent == Path(sys.argv[1]), vllm_ascend.__file__
        os.environ["FLASHLB_VLLM_ASCEND"] = "1"
        os.environ["FLASHLB_BALANCER_OPTIONS"] = '{"threshold": 1.01, "max_layers_per_cycle": 2}'
        from vllm_ascend.eplb.core.policy import policy_factory as pf
        from vllm_ascend.eplb.core.policy import policy_flashlb
        from vllm_ascend.eplb.core.policy.policy_default_eplb import DefaultEplb
        from vllm_ascend.eplb.core import eplb_worker as ew
        from flashlb import Placement
        from flashlb.integrations import vllm as fv, vllm_ascend as fa

        warmed = []
        policy_flashlb.warm_up = pf.warm_up = lambda: warmed.append(1)
        fv.plugin()                                     # what vLLM's plugin loader calls
        from vllm.distributed.eplb.policy import EPLB_POLICIES
        from vllm.config.parallel import EPLBConfig
        assert EPLB_POLICIES["flashlb"] is fv.FlashLBEplbPolicy      # vLLM 0.23: phy2log only
        assert EPLBConfig(policy="flashlb", use_async=False).policy == "flashlb"
        policy = pf.PolicyFactory.generate_policy(3)
        assert isinstance(policy, fa.FlashLBPolicy) and not warmed
        assert policy.balancer_options == {"threshold": 1.01, "max_layers_per_cycle": 2}
        assert isinstance(pf.PolicyFactory.generate_policy(1), DefaultEplb)

        # vllm-ascend's worker: multi-stage loads for type 3, its placement check, its maps
        class Group:
            rank_in_group = 0
        ew.get_ep_group = lambda: Group()               # the NPU process group
        g = torch.Generator().manual_seed(0)
        L, N, D, S = 4, 16, 4, 6
        table = Placement.from_phy2log(torch.arange(D * S).remainder(N).repeat(L, 1), N, D).device_view()
        expert_maps = ew.EplbWorker.local2global(None, table)          # [L, D, N] slot of each expert, -1
        workload = torch.rand(5, L, D, S, generator=g) * 100
        workload[:, :, 0] *= 30                                       # device 0 overloaded
        worker = ew.EplbWorker({"expert_maps": expert_maps, "moe_load": workload}, 3, tp_size=1)
        assert worker.multi_stage and isinstance(worker.policy, fa.FlashLBPolicy)
        old_placement = worker.global2local(expert_maps, S)
        worker.old_expert_maps = expert_maps
        changed, priority, new = worker.calculate_rebalance_experts(workload, old_placement)
        assert changed and 1 <= len(priority) <= 2 and new.dtype == torch.int64 and new.device.type == "cpu"
        checked = new.clone()
        worker.check_expert_placement(old_placement, checked)          # resets invalid layers
        assert torch.equal(checked, new), "vllm-ascend's worker rejected a layer"
        Placement.from_device_view(new, N).validate()
        # the maps the worker derives and the transfers it composes
        new_maps = worker.local2global(new)
        assert torch.equal(worker.global2local(new_maps, S), new)
        infos = list(worker.compose_expert_update_info_greedy(new_maps, expert_maps))
        moved = sum(len(v) for send, recv, _, _ in infos for v in recv.values())
        assert moved == int((new != old_placement).sum())

        # the worker's whole cycle, as its process runs it: fetch, rebalance, check, new maps,
        # transfers and log2phy packed for this rank, hotness figures before and after
        shared = {"expert_maps": expert_maps.clone(), "moe_load": workload}
        cycle = ew.EplbWorker(shared, 3, tp_size=1)
        packed = cycle.do_update()
        assert len(packed) == L and [p[4] for p in packed] == list(range(L))
        applied = cycle.global2local(shared["expert_maps"], S)
        Placement.from_device_view(applied, N).validate()
        assert torch.equal(applied, new)                # the same balancer decision, applied whole
        h = cycle.latest_expert_hotness
        assert h["update_max"] < h["current_max"], h
        for send, recv, slots, log2phy, layer in packed:
            assert slots == shared["expert_maps"][layer][0].tolist()
            assert len(log2phy) == N and all(0 <= x < D * S for x in log2phy)
            assert all(applied[layer].flatten()[x] == e for e, x in enumerate(log2phy))

        # the EPLB process's loop (the body of its child process): no warm-up of the replaced
        # policy, one wake-up, one packed update handed back; the second wake-up ends the loop
        import queue
        class Wakes:
            def __init__(self): self.n = 0
            def get(self):
                self.n += 1
                if self.n > 1:
                    raise RuntimeError("stop")
        proc = ew.EplbProcess({"expert_maps": expert_maps.clone(), "moe_load": workload}, 3, tp_size=1)
        assert isinstance(proc.worker.policy, fa.FlashLBPolicy)
        handed = queue.Queue()
        proc.worker_process(Wakes(), handed)
        assert not warmed and handed.qsize() == 1
        assert [p[2] for p in handed.get()] == [p[2] for p in packed]
        print("ok")
    ''', [str(ASCEND_SRC or UPSTREAM_ASCEND)])
    assert "ok" in out
