"""fairseq's own distributed data-parallel training with the plugin, on two real CPU workers (gloo): the three ways
fairseq launches it work (patches/distributed_on_cpu.py), and every worker's quantizer state stays identical
(plugin/distributed.py): after every update, in the checkpoint, and after a restart."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fairseq.checkpoint_utils import load_checkpoint_to_cpu
from helpers import TINY_TRAIN, accuracy_by_hand

HERE = Path(__file__).resolve().parent
TWO = ["--distributed-backend", "gloo", "--find-unused-parameters", "--batch-size", "8"]
ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    return out


def two_workers(data: Path, save: Path, *flags: str) -> str:
    """Two processes of fairseq-train (``--distributed-no-spawn``, explicit ranks, one port), each dumping its
    quantizer state at every checkpoint (dist_worker.py); returns rank 0's output."""
    port = free_port()
    cmd = [sys.executable, str(HERE / "dist_worker.py"), str(data), "--save-dir", str(save), *TINY_TRAIN, *TWO,
           "--distributed-world-size", "2", "--distributed-init-method", f"tcp://127.0.0.1:{port}",
           "--distributed-no-spawn", "--device-id", "0", *flags]
    procs = [subprocess.Popen([*cmd, "--distributed-rank", str(r)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=ENV) for r in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    failed = [f"rank {r} (exit {p.returncode}):\n{(out + err)[-3000:]}"
              for r, (p, (out, err)) in enumerate(zip(procs, outs)) if p.returncode != 0]
    assert not failed, "\n".join(failed)
    return outs[0][0] + outs[0][1]


def rank_states(save: Path, update: int) -> tuple[dict, dict]:
    return tuple(torch.load(save / "ranks" / f"rank{r}-update{update}.pt") for r in (0, 1))


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs between the workers"


QUANT_STATE = {
    "running ranges, embedding groups, CPT": ["--quantw", "--quantin", "--quant-dict", "{'y': 'ngp2'}",
                                              "--cpt-config", str(HERE.parents[1] / "configs" / "cfg_cpt.json")],
    "learned ranges, percentile, update-freq 2, legacy_ddp": [
        "--quantw", "--quantin", "--learn-ranges", "--estimatorin", "percentile", "--update-freq", "2",
        "--ddp-backend", "legacy_ddp"],
}


@pytest.mark.parametrize("flags", QUANT_STATE.values(), ids=QUANT_STATE.keys())
def test_two_workers_keep_identical_quantizer_state(tiny_data, tmp_path, flags):
    out = two_workers(tiny_data, tmp_path, "--max-update", "8", "--save-interval-updates", "4",
                      "--validate-interval-updates", "4", *flags)
    assert out.count("quantizer state identical on all 2 workers") >= 2
    for update in (4, 8):
        a, b = rank_states(tmp_path, update)
        assert_identical(a, b)
        tracked = {k for k, v in a.items() if k.endswith("num_batches_tracked") and v > 0}
        # the state compared is recorded state, not the empty initial one
        assert "encoder.sentence_encoder.layers.1.fc2.input_quant.num_batches_tracked" in tracked
        assert len(tracked) >= 15
    # the checkpoint holds exactly that state
    saved = load_checkpoint_to_cpu(str(tmp_path / "checkpoint_last.pt"))["model"]
    for k, v in a.items():
        if "." in k:
            assert torch.equal(saved[k], v), k
    assert a["bitops_totals"][0] > 0


def _sync_worker(rank: int, port: int, out: str) -> None:
    """One of two processes: a QuantMeasure per estimator sees this worker's own shard; the sync combines them."""
    import torch.distributed as dist

    from fairseq_quant.core.quant_measure import QuantMeasure
    from fairseq_quant.core.spec import QuantSpec
    from fairseq_quant.plugin.distributed import QuantStateMismatch, RangeSync

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    sync = RangeSync()
    points = torch.nn.ModuleList(QuantMeasure(QuantSpec(mode="quantize", estimator=e))
                                 for e in ("minmax", "percentile"))
    points.append(QuantMeasure(QuantSpec(mode="quantize", groups=2, permute=True)))
    sync.attach(points)
    shard = torch.randn(64, 4, generator=torch.Generator().manual_seed(rank)) * (1 + 3 * rank)
    for q in points:
        q.train()(shard)
        assert q.pending is not None and not q._initialized  # deferred: the buffers wait for the flush
    counts = sync.flush([10.0 * (rank + 1)])
    state = [{k: v.clone() for k, v in q.state_dict().items()} for q in points]
    sync.check(points)  # they agree: logs so, raises nothing
    if rank == 1:
        points[1].running_max += 1.0  # one worker's state drifts
    try:
        sync.check(points)
        mismatch = ""
    except QuantStateMismatch as e:
        mismatch = str(e)
    torch.save({"counts": counts, "state": state, "mismatch": mismatch}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_range_sync_combines_the_shards_by_the_estimators_rule(tmp_path):
    torch.multiprocessing.spawn(_sync_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert a["counts"] == b["counts"] == [30.0]  # the MACs account summed over the workers
    # the validation check: both workers stop, naming the first point that differs
    assert a["mismatch"] == b["mismatch"] == "quantizer state differs between the 2 data-parallel workers, first at 1"
    shards = [torch.randn(64, 4, generator=torch.Generator().manual_seed(r)) * (1 + 3 * r) for r in (0, 1)]
    both = torch.cat(shards)
    for sa, sb in zip(a["state"], b["state"]):
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
    minmax, percentile, groups = a["state"]
    assert torch.equal(minmax["running_min"], both.min().reshape(1))  # extremes: the global batch's range
    assert torch.equal(minmax["running_max"], both.max().reshape(1))
    from fairseq_quant.core.estimators import percentile_range

    each = [percentile_range(s, 99.99) for s in shards]  # mean: of the workers' own estimates
    assert torch.allclose(percentile["running_max"], (each[0][1] + each[1][1]).reshape(1) / 2)
    assert torch.equal(groups["dim_max"], both.amax(0))  # per dimension: min-max


def test_a_restarted_two_worker_run_continues_exactly(tiny_data, tmp_path):
    flags = ["--quantw", "--quantin", "--max-update", "8", "--save-interval-updates", "4"]
    two_workers(tiny_data, tmp_path / "whole", *flags)
    two_workers(tiny_data, tmp_path / "stopped", *flags[:-3], "4", *flags[-2:])  # stops at 4: a checkpoint
    two_workers(tiny_data, tmp_path / "stopped", *flags)  # restarts from checkpoint_last.pt
    a = load_checkpoint_to_cpu(str(tmp_path / "whole" / "checkpoint_last.pt"))["model"]
    b = load_checkpoint_to_cpu(str(tmp_path / "stopped" / "checkpoint_last.pt"))["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert_identical(*rank_states(tmp_path / "stopped", 8))


def test_fairseq_spawn_and_torchrun_launch_two_cpu_workers(tiny_data, tmp_path):
    """fairseq's own spawn (--distributed-world-size 2) and torchrun: two workers, global batch 2 x 8."""
    spawn = check(subprocess.run(
        [sys.executable, "-m", "fairseq_cli.train", str(tiny_data), "--save-dir", str(tmp_path / "spawn"),
         *TINY_TRAIN, *TWO, "--distributed-world-size", "2", "--distributed-port", str(free_port()), "--quantw",
         "--quantin", "--max-update", "3"], capture_output=True, text=True, timeout=300, env=ENV))
    run = check(subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         "-m", "fairseq_cli.train", str(tiny_data), "--save-dir", str(tmp_path / "torchrun"), *TINY_TRAIN, *TWO,
         "--quantw", "--quantin", "--max-update", "3"], capture_output=True, text=True, timeout=300, env=ENV))
    for out in (spawn, run):
        assert "distributed init (rank 1)" in out
        assert "bsz=16" in out and "quantizer state identical on all 2 workers" in out
    a = load_checkpoint_to_cpu(str(tmp_path / "spawn" / "checkpoint_last.pt"))["model"]
    b = load_checkpoint_to_cpu(str(tmp_path / "torchrun" / "checkpoint_last.pt"))["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k  # the same training, however it was launched


def test_two_workers_learn_the_task_as_one_does(tiny_data, tmp_path):
    """W8A8 QAT on 2 workers x 8 sentences against 1 worker x 16: the same global batch, accuracy within noise."""
    flags = ["--quantw", "--quantin", "--max-update", "48", "--lr", "3e-3"]
    two_workers(tiny_data, tmp_path / "two", *flags)
    check(subprocess.run([sys.executable, "-m", "fairseq_cli.train", str(tiny_data), "--save-dir",
                          str(tmp_path / "one"), *TINY_TRAIN, *flags], capture_output=True, text=True, timeout=300,
                         env=ENV))
    (two, quantized), (one, _) = (accuracy_by_hand(str(tmp_path / run / "checkpoint_last.pt"), str(tiny_data))
                                  for run in ("two", "one"))
    print(f"accuracy: 1 worker {one:.3f}, 2 workers {two:.3f}")
    assert quantized and one > 0.6 and abs(two - one) <= 0.08, (one, two)
