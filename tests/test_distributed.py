"""torchrun: `profile` split over processes (gloo, CPU) writes the table one process writes, resumes
after a killed rank, and a failure on one rank stops every rank in one sentence; `finetune` runs
DistributedDataParallel and takes the steps one process takes.

Runs real torchrun jobs of two local processes on the bundled Fashion-MNIST CNN (a few seconds each).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infoq_deploy.core.distributed import World, shard

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ["profile", "zoo:fashion-cnn", "--target", "fpga-int", "--data", "builtin:fashion-mnist",
           "--calib-size", "120", "--n-proj", "8"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _env(cache: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "INFOQ_DEPLOY_CACHE": str(cache), "OMP_NUM_THREADS": "1", **extra}


def _run(cmd: list[str], cache: Path, timeout: int = 240, **env) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=_env(cache, **env), capture_output=True, text=True, timeout=timeout)


def _table(path: Path) -> dict:
    """The table without what says how it was computed (times, processes, resumption)."""
    doc = json.loads(path.read_text())
    for key in ("timings", "distributed", "resumed"):
        doc["meta"].pop(key, None)
    return doc


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The table one process writes, with pair terms (so the pair runs are split too)."""
    tmp = tmp_path_factory.mktemp("single")
    r = _run([sys.executable, "-m", "infoq_deploy", *PROFILE, "--pairwise", "-o", str(tmp / "one.json")], tmp / "cache")
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp / "one.json"


def test_shard_is_contiguous_balanced_and_covers_everything():
    items = list(range(20))
    costs = [20 - i for i in items]  # early layers evaluate long suffixes
    for size in (1, 2, 3, 7, 25):
        parts = [shard(items, costs, World(r, size)) for r in range(size)]
        assert [i for p in parts for i in p] == items  # every item once, in order
        if size <= 3:
            loads = [sum(costs[i] for i in p) for p in parts]
            assert max(loads) - min(loads) <= max(costs)  # within one item of even
    # the early, expensive layers are spread out, not given all to rank 0
    two = [shard(items, costs, World(r, 2)) for r in range(2)]
    assert len(two[0]) < len(two[1])


def test_two_processes_write_the_one_process_table(single, tmp_path):
    out = tmp_path / "two.json"
    r = _run([*TORCHRUN, "-m", "infoq_deploy", *PROFILE, "--pairwise", "-o", str(out)], tmp_path / "cache")
    assert r.returncode == 0, r.stderr[-3000:]
    assert _table(out) == _table(single)  # bit-identical scores, pair terms, observers, baseline
    meta = json.loads(out.read_text())["meta"]
    assert meta["distributed"]["world_size"] == 2
    assert sum(meta["distributed"]["layers_per_rank"]) == len(meta["layer_observers"])
    assert all(n > 0 for n in meta["distributed"]["layers_per_rank"])  # the work really was split
    assert not list((tmp_path / "cache").glob("*.partial*.json"))  # rank files removed with the table
    assert r.stdout.count("wrote ") == 1  # rank 0 alone writes and reports


# Each rank sleeps after checkpointing its first swept layer, on the job's first attempt only; the
# test then kills rank 1, torchrun restarts both, and they resume from the rank files.
_SLOW = r"""
import os, sys, time
from pathlib import Path
from infoq_deploy.profile import cache as profile_cache

orig = profile_cache.ProfileCache.save_partial
def slow_save(self, state):
    orig(self, state)
    if state.get("sweep") and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        Path({pids!r}, os.environ["RANK"]).write_text(str(os.getpid()))
        time.sleep(120)
profile_cache.ProfileCache.save_partial = slow_save
from infoq_deploy.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_rank_is_restarted_and_resumes_to_the_same_table(single, tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    script = tmp_path / "slow.py"
    script.write_text(_SLOW.format(pids=str(pids)))
    cache, out = tmp_path / "cache", tmp_path / "resumed.json"
    cmd = [*TORCHRUN[:-2], "--nproc-per-node", "2", "--max-restarts", "1", str(script), *PROFILE, "--pairwise",
           "-o", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (pids / "1").is_file() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert (pids / "1").is_file(), proc.communicate(timeout=30)[1][-3000:]
        time.sleep(0.3)  # the pid file is written just before the sleep
        assert sorted(p.name.split(".")[-2] for p in cache.glob("*.partial.r*.json")) == ["r0", "r1"]
        os.kill(int((pids / "1").read_text()), signal.SIGKILL)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert json.loads(out.read_text())["meta"]["resumed"] is True
    assert _table(out) == _table(single)
    assert not list(cache.glob("*.partial*.json"))


def test_a_killed_job_resumes_in_one_process(single, tmp_path):
    """Partial files of a two-process job are read by a one-process rerun (and the reverse holds too:
    a rank reads every partial file of its key)."""
    pids = tmp_path / "pids"
    pids.mkdir()
    script = tmp_path / "slow.py"
    script.write_text(_SLOW.format(pids=str(pids)))
    cache, out = tmp_path / "cache", tmp_path / "resumed.json"
    proc = subprocess.Popen([*TORCHRUN, str(script), *PROFILE, "--pairwise", "-o", str(out)], cwd=ROOT,
                            env=_env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not ((pids / "0").is_file() and (pids / "1").is_file()) and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not out.exists() and len(list(cache.glob("*.partial.r*.json"))) == 2
    r = _run([sys.executable, "-m", "infoq_deploy", *PROFILE, "--pairwise", "-o", str(out)], cache)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(out.read_text())["meta"]["resumed"] is True
    assert _table(out) == _table(single)


_FAIL = r"""
import sys
from infoq_deploy.core import distributed
from infoq_deploy.core.errors import UserError

def work():
    if distributed.world().rank == 1:
        raise UserError("layer x has NaN weights on rank 1; fix the model")
    return 0

def cmd():
    distributed.gather(work)
    return 0
try:
    cmd()
except UserError as exc:
    print(f"rank {distributed.world().rank}: {exc}", file=sys.stderr)
    sys.exit(2)
"""


def test_an_error_on_one_rank_stops_every_rank_with_its_sentence(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text(_FAIL)
    r = _run([*TORCHRUN, str(script)], tmp_path / "cache", timeout=120)
    assert r.returncode != 0
    for rank in (0, 1):
        assert f"rank {rank}: layer x has NaN weights on rank 1; fix the model" in r.stderr


@pytest.mark.parametrize("argv, says", [
    (["allocate", "s.json", "--target", "fpga-int", "--budget", "4bit", "-o", "a.json"], "`allocate` does not run under torchrun"),
    (["--target", "fpga-int", "--budget", "4bit"], "the one-command pipeline does not run under torchrun"),
    ([*PROFILE[:-4], "--method", "mse", "-o", "m.json"], "--method mse does not split its work across processes"),
])
def test_stages_that_do_not_split_refuse_torchrun_in_one_sentence(argv, says, tmp_path):
    r = _run([sys.executable, "-m", "infoq_deploy", *argv], tmp_path / "cache", WORLD_SIZE="2", RANK="0")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], r.stderr


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """The default model at 4 bits (mse table: fine-tuning does not care where the bits came from)."""
    from infoq_deploy import stages
    from infoq_deploy.quantize.file import ModelSource, save_quantized

    path = tmp_path_factory.mktemp("quantized") / "q.pt"
    model = stages.load_model(stages.DEFAULT_MODEL)
    plan = stages.plan_datasets(model.preprocess, data=stages.DEFAULT_DATA)
    target = stages.load_target("fpga-int")
    doc = stages.allocation_document(stages.profile(model, target, plan.calibration, "mse"), target, ["4bit"])
    save_quantized(path, stages.quantize(model, target, doc, plan, ModelSource.of(stages.DEFAULT_MODEL)))
    return path


def test_finetune_under_torchrun_takes_the_one_process_steps(quantized, tmp_path):
    import torch

    runs = {}
    for name, launcher in (("one", [sys.executable, "-m", "infoq_deploy"]), ("two", [*TORCHRUN, "-m", "infoq_deploy"])):
        out, ck = tmp_path / f"{name}.pt", tmp_path / f"ck_{name}"
        r = _run([*launcher, "finetune", str(quantized), "--epochs", "1", "--batch-size", "96", "-o", str(out),
                  "--checkpoints", str(ck)], tmp_path / "cache")
        assert r.returncode == 0, r.stderr[-3000:]
        assert r.stdout.count("wrote ") == 1
        runs[name] = torch.load(ck / "last.pt", weights_only=True)
    one, two = runs["one"], runs["two"]
    # 500 training images in batches of 96: the last batch (20) is split 10/10 too
    for h1, h2 in zip(one["history"], two["history"], strict=True):
        assert h2["loss"] == pytest.approx(h1["loss"], rel=1e-5)
        assert h2["train_acc"] == pytest.approx(h1["train_acc"], abs=1 / 500)
        assert h2["eval_acc"] == pytest.approx(h1["eval_acc"], abs=1 / 500)
    diffs = [float((one["model"][k] - two["model"][k]).abs().max())
             for k in one["model"] if one["model"][k].is_floating_point()]
    # the same steps, summed in another order: far closer than the epoch moved the weights
    from infoq_deploy.quantize.file import load_quantized

    start = load_quantized(quantized).qmodel.state_dict()
    moved = max(float((one["model"][k] - start[k]).abs().max()) for k in one["model"] if one["model"][k].is_floating_point())
    assert max(diffs) < 1e-3 and max(diffs) < moved / 20, (max(diffs), moved)
