import json
import re
import subprocess
import sys

import pytest
import torch

from flashlb import Placement
from flashlb.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "flashlb.cli", *args], capture_output=True, text=True)


@pytest.fixture
def loads_json(tmp_path):
    g = torch.Generator().manual_seed(0)
    h = torch.rand(4, 32, generator=g) ** 3 * 1000
    h[0] = 0  # a dense layer, as in whole-model recordings
    path = tmp_path / "loads.json"
    path.write_text(json.dumps({"logical_count": h.tolist()}))
    return path


def test_help_for_every_command():
    for args in ([], ["plan"], ["simulate"], ["report"], ["demo"]):
        r = run(*args, "--help")
        assert r.returncode == 0 and "usage: flashlb" in r.stdout


@pytest.mark.parametrize("suffix", [".json", ".pt", ".safetensors"])
def test_plan_writes_a_placement(tmp_path, loads_json, capsys, suffix):
    out = tmp_path / f"placement{suffix}"
    assert main(["plan", str(loads_json), "--devices", "8", "--physical", "48", "-o", str(out)]) == 0
    p = Placement.load(out, num_devices=8, num_experts=32).validate()
    assert p.num_layers == 4  # every layer of the file, the dense one included
    text = capsys.readouterr().out
    assert "peak/avg" in text and "wrote" in text


def test_plan_with_previous_reports_moves(tmp_path, loads_json, capsys):
    first = tmp_path / "a.json"
    main(["plan", str(loads_json), "-d", "8", "-p", "48", "-o", str(first)])
    second = tmp_path / "b.json"
    assert main(["plan", str(loads_json), "-d", "8", "-p", "48", "--previous", str(first),
                 "--move-penalty", "0.001", "-o", str(second)]) == 0
    assert "0 slots moved" in capsys.readouterr().out


def test_plan_on_the_real_statistics(tmp_path, real_hotness):
    from conftest import real_files

    r = run("plan", str(real_files()[0]), "-d", "32", "-p", "288", "-o", str(tmp_path / "p.json"))
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "p.json").read_text())
    assert len(data["physical_to_logical_map"]) == 61  # SGLang expects every layer


@pytest.mark.parametrize(
    "args, message",
    [
        (["plan", "missing.json", "-d", "2", "-p", "4", "-o", "OUT/p.json"], "no such file"),
        (["plan", "LOADS", "-d", "8", "-p", "50", "-o", "OUT/p.json"], "multiple of num_devices"),
        (["plan", "LOADS", "-d", "8", "-p", "48", "-o", "OUT/p.txt"], "must end in"),
        (["plan", "LOADS", "-d", "8", "-p", "48", "-o", "OUT/nodir/p.json"], "no such directory"),
        (["plan", "BAD", "-d", "8", "-p", "48", "-o", "OUT/p.json"], "not valid JSON"),
        (["plan", "TXT", "-d", "8", "-p", "48", "-o", "OUT/p.json"], "unknown format"),
        (["plan", "LOADS", "-d", "8", "-p", "48", "--previous", "LOADS", "-o", "OUT/p.json"], "--previous"),
    ],
)
def test_errors_are_one_line_exit_2(tmp_path, loads_json, args, message):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "x.txt").write_text("1 2 3")
    subst = {"LOADS": str(loads_json), "BAD": str(tmp_path / "bad.json"), "TXT": str(tmp_path / "x.txt")}
    args = [subst.get(a, a.replace("OUT", str(tmp_path))) for a in args]
    r = run(*args)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "p.json").exists()


def test_simulate_and_report(tmp_path, capsys):
    from flashlb.synthetic import drifting_trace

    trace = tmp_path / "trace.pt"
    torch.save({"logical_count": drifting_trace(64, 2, 16, tokens_per_episode=512, seed=1)}, trace)
    assert main(["simulate", str(trace), "-d", "4", "-p", "24", "--episode-len", "4", "--cycle", "4",
                 "--window", "4", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "balancer" in out and "clairvoyant" in out and "GB moved" in out
    assert main(["report", str(trace), "-d", "4", "-p", "24", "--episode-len", "8", "--cycle-len", "16",
                 "--out", str(tmp_path / "fig")]) == 0
    for name in ("device_loads.png", "peak_per_layer.png", "simulation.png"):
        assert (tmp_path / "fig" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("extra, message", [
    (["report", "--cycle-len", "0"], "--cycle-len"),  # was no replay, silently
    (["report", "--cycle-len", "-5"], "--cycle-len"),  # was a replay of one 16-step episode per cycle
    (["report", "--cycle-len", "5"], "--cycle-len"),  # was replayed as 16-step cycles, silently
    (["report", "--cycle-len", "40"], "--cycle-len"),  # was replayed as 32-step cycles, silently
    (["simulate", "--expert-bytes", "-5"], "--expert-bytes"),  # was "-0.00 GB moved"
    (["simulate", "--out", "FILE"], "cannot create the folder"),  # was found out after the simulation
])
def test_cli_refuses_meaningless_numbers_and_outputs_before_any_work(tmp_path, capsys, extra, message):
    from flashlb.synthetic import drifting_trace

    trace = tmp_path / "trace.pt"
    torch.save({"logical_count": drifting_trace(24, 2, 16, tokens_per_episode=512, seed=1)}, trace)
    (tmp_path / "file").write_text("x")
    cmd, *rest = [str(tmp_path / "file") if a == "FILE" else a for a in extra]
    base = [cmd, str(trace), "-d", "4", "-p", "24"]
    base += ["--window", "4", "--cycle", "4"] if cmd == "simulate" else ["--out", str(tmp_path / "fig")]
    assert main(base + rest) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""  # nothing computed, nothing printed
    assert not (tmp_path / "fig").exists()


def test_plan_refuses_an_output_that_is_no_file_before_planning(tmp_path, loads_json, capsys):
    """-o naming a directory failed only after the plan (as 'cannot write it'); -o naming a
    FIFO replaced the FIFO with a regular file. Both are refused before any work."""
    import os

    (tmp_path / "dir.json").mkdir()
    os.mkfifo(tmp_path / "fifo.json")
    for name, message in (("dir.json", "directory"), ("fifo.json", "not a regular file")):
        assert main(["plan", str(loads_json), "-d", "8", "-p", "48", "-o", str(tmp_path / name)]) == 2
        captured = capsys.readouterr()
        assert message in captured.err and captured.out == ""
    assert (tmp_path / "dir.json").is_dir() and not (tmp_path / "fifo.json").is_file()
    # a symlink to a regular file is a file: written through, the link stays a link
    (tmp_path / "real.json").write_text("{}")
    (tmp_path / "link.json").symlink_to(tmp_path / "real.json")
    assert main(["plan", str(loads_json), "-d", "8", "-p", "48", "-o", str(tmp_path / "link.json")]) == 0
    assert (tmp_path / "link.json").is_symlink()
    Placement.load(tmp_path / "real.json", num_devices=8).validate()


def test_simulate_a_regime_with_chosen_policies(capsys):
    assert main(["simulate", "--regime", "swaps", "--episodes", "24", "--layers", "2", "--experts", "16",
                 "-d", "4", "-p", "24", "--policies", "fresh,default"]) == 0
    out = capsys.readouterr().out
    assert "fresh" in out and "default" in out and "balancer" not in out
    assert main(["simulate", "--regime", "swaps", "-d", "4", "-p", "24", "--policies", "cherry"]) == 2
    assert "--policies" in capsys.readouterr().err
    assert main(["simulate", "--regime", "nope", "--layers", "2", "--experts", "16", "-d", "4", "-p", "24"]) == 2
    assert main(["simulate", "-d", "4", "-p", "24"]) == 2


def test_plan_several_workloads_together(tmp_path, capsys):
    import flashlb
    from flashlb.io import load_hotness

    g = torch.Generator().manual_seed(2)
    files = []
    for i in range(3):
        h = torch.rand(3, 32, generator=g) ** 4 * 1000
        files.append(tmp_path / f"w{i}.json")
        files[-1].write_text(json.dumps({"logical_count": h.tolist()}))
    out = tmp_path / "mix.json"
    assert main(["plan", *map(str, files), "-d", "4", "-p", "40", "--weights", "1", "2", "1", "-o", str(out)]) == 0
    p = Placement.load(out, num_devices=4)
    p.validate()
    loads = [torch.as_tensor(load_hotness(str(f)), dtype=torch.float64) for f in files]
    same = flashlb.plan_workloads(loads, 40, 4, weights=[1, 2, 1])
    assert torch.equal(p.phy2log, same.phy2log)
    capsys.readouterr()
    assert main(["plan", *map(str, files), "-d", "4", "-p", "40", "--weights", "1", "-o", str(out)]) == 2
    assert "--weights" in capsys.readouterr().err
    # one file has nothing to weigh: the weights were ignored, whatever they were
    assert main(["plan", str(files[0]), "-d", "4", "-p", "40", "--weights", "nan", "-o",
                 str(tmp_path / "one.json")]) == 2
    assert "nothing to weigh" in capsys.readouterr().err and not (tmp_path / "one.json").exists()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"logical_count": torch.rand(2, 32).tolist()}))
    assert main(["plan", str(files[0]), str(bad), "-d", "4", "-p", "40", "-o", str(out)]) == 2
    assert "differ" in capsys.readouterr().err


def test_simulate_passes_a_move_budget_to_the_balancer(capsys):
    args = ["simulate", "--regime", "swaps", "--episodes", "24", "--layers", "2", "--experts", "16",
            "-d", "4", "-p", "24", "--policies", "balancer"]
    assert main(args + ["--max-moves", "0"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("balancer"))
    assert int(line.split()[2]) == 0  # no slot moved under a budget of 0
    # a layer price no gain can pay keeps every layer where the boot map put it
    assert main(args + ["--layer-penalty", "1000"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("balancer"))
    assert int(line.split()[2]) == 0
    assert main(args + ["--layer-penalty", "-1"]) == 2
    assert "layer_penalty" in capsys.readouterr().err


def test_plan_with_previous_and_a_layer_price(tmp_path, loads_json, capsys):
    first = tmp_path / "a.json"
    main(["plan", str(loads_json), "-d", "8", "-p", "48", "-o", str(first)])
    # hot and cold experts trade places: without a layer price the layers are re-placed
    h = torch.tensor(json.loads(loads_json.read_text())["logical_count"])
    swapped = tmp_path / "swapped.json"
    swapped.write_text(json.dumps({"logical_count": h.flip(-1).tolist()}))
    capsys.readouterr()
    second = tmp_path / "b.json"
    base = ["plan", str(swapped), "-d", "8", "-p", "48", "--previous", str(first), "-o", str(second)]
    assert main(base) == 0
    assert not re.search(r"(?<!\d)0 slots moved", capsys.readouterr().out)
    assert main(base + ["--layer-penalty", "1000"]) == 0
    assert re.search(r"(?<!\d)0 slots moved", capsys.readouterr().out)
    assert main(base + ["--layer-penalty", "nan"]) == 2
    assert "layer_penalty" in capsys.readouterr().err


@pytest.mark.parametrize("data", ["real", "synthetic"])
def test_demo_runs_end_to_end(tmp_path, monkeypatch, capsys, data):
    """The README's first command: plans, writes a valid placement and the figures."""
    if data == "synthetic":  # no real statistics: the demo plans its own synthetic trace
        monkeypatch.setattr("flashlb.cli._data_dir", lambda: None)
    elif __import__("flashlb.cli", fromlist=["_data_dir"])._data_dir() is None:
        pytest.skip("the shared DeepSeek-V3 statistics (../shared/data) are not present")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    Placement.load(out / "placement.json", num_devices=32).validate()
    assert list(out.glob("*.png"))
    assert "demo finished" in capsys.readouterr().out
