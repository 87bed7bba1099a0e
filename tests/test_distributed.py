"""Training with several processes: real launchers (torchrun, accelerate launch), two CPU processes, gloo."""

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env
from safetensors.torch import load_file

from mlm_helpers.config import ConfigError
from mlm_helpers.data.sources import TextSource, open_stream, split_stream
from mlm_helpers.mlm_head import SparseMaskedLM
from mlm_helpers.training import deepspeed_zero, distributed
from mlm_helpers.training.distributed import shard_rows

from .conftest import REPO, tiny_bert

BIN = Path(sys.executable).parent  # torchrun and accelerate, as installed beside this Python
# 40 steps with a checkpoint every 5: long enough to kill a process between two checkpoints. No
# shuffling, so that one process reading rows in order sees what two processes see between them. fp32:
# "auto" picks bf16 on CPUs with AVX512-BF16, and the runs are compared to float32 rounding.
RUN = ["train", "--preset", "quick", "--max-steps", "40", "--eval-size", "100", "--log-every", "10",
       "--eval-every", "0", "--shuffle-buffer", "1", "--checkpoint-every", "5", "--no-progress",
       "--mixed-precision", "no"]  # fmt: skip
ENV = {
    **os.environ,
    "PYTHONPATH": str(REPO),
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
}


def launch(
    command: list[str], tmp: Path, batch_size: int, env: dict | None = None, extra: tuple = (), **popen
) -> subprocess.Popen:
    args = [*RUN, *extra, "--batch-size", str(batch_size), "--output-dir", str(tmp / "out")]
    args += ["--model-dir", str(tmp / "model")]
    return subprocess.Popen([*command, *args], cwd=REPO, env={**ENV, **(env or {})}, text=True, **popen)


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def weights(tmp: Path) -> dict:
    return load_file(tmp / "model" / "model.safetensors")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """The quick preset on two processes (batch 8 each) and on one (batch 16), both probed."""
    runs = {}
    for name, command, batch_size in [
        ("two", [BIN / "torchrun", "--standalone", "--nproc_per_node", "2"], 8),
        ("one", [sys.executable], 16),
    ]:
        tmp = tmp_path_factory.mktemp(name)
        probe = [*command, "tests/distributed_probe.py", str(tmp / "probe")]
        out = finish(launch(probe, tmp, batch_size, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        ranks = [json.loads(p.read_text()) for p in sorted((tmp / "probe").glob("rank*.json"))]
        runs[name] = {"dir": tmp, "stdout": out, "ranks": ranks}
    return runs


def test_two_processes_form_one_group_see_disjoint_examples_and_agree_after_every_step(two_processes):
    run = two_processes["two"]
    assert [r["rank"] for r in run["ranks"]] == [0, 1]
    for rank in run["ranks"]:
        assert (rank["group_size"], rank["distributed_type"]) == (2, "DistributedType.MULTI_CPU")
    assert "2 processes on cpu" in run["stdout"] and "effective batch 16" in run["stdout"]
    first, second = (r["examples"] for r in run["ranks"])
    assert len(first) == len(second) == 40 * 8
    assert not set(first) & set(second)
    for fingerprints in run["ranks"][0]["fingerprints"]:
        assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]
    assert len(run["ranks"][0]["fingerprints"]) == 40
    # Only the main process writes: one record per logged step, one summary saying 2 processes.
    records = [json.loads(line) for line in (run["dir"] / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [10, 20, 30, 40]
    summary = json.loads((run["dir"] / "out" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["effective_batch_size"] == 16


def test_two_processes_match_one_process_with_the_same_effective_batch(two_processes):
    two, one = two_processes["two"], two_processes["one"]
    together = two["ranks"][0]["examples"] + two["ranks"][1]["examples"]
    assert Counter(together) == Counter(one["ranks"][0]["examples"])
    a, b = weights(two["dir"]), weights(one["dir"])
    assert a.keys() == b.keys()
    differences = {name: (a[name] - b[name]).abs().max().item() for name in a}
    assert max(differences.values()) < 1e-5, sorted(differences.items(), key=lambda kv: -kv[1])[:3]
    after = [json.loads((r["dir"] / "out" / "summary.json").read_text())["after"] for r in (two, one)]
    assert after[0]["tokens"] == after[1]["tokens"]
    assert after[0]["loss"] == pytest.approx(after[1]["loss"], abs=1e-4)
    # scored on the main process alone, and the same held-out texts
    assert after[0]["pseudo_perplexity"] == pytest.approx(after[1]["pseudo_perplexity"], rel=1e-4)


def test_evaluate_on_two_processes_reports_once_what_the_run_reported(two_processes):
    run = two_processes["two"]
    command = [BIN / "torchrun", "--standalone", "--nproc_per_node", "2", "-m", "mlm_helpers", "evaluate",
               "--preset", "quick", "--eval-size", "100", "--model", str(run["dir"] / "model"),
               "--mixed-precision", "no"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=ENV, text=True, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    reported = json.loads(done.stdout)  # one JSON document: only the main process printed
    after = json.loads((run["dir"] / "out" / "summary.json").read_text())["after"]
    assert reported["tokens"] == after["tokens"]
    assert reported["loss"] == pytest.approx(after["loss"], rel=1e-5)
    assert reported["pseudo_perplexity"] == pytest.approx(after["pseudo_perplexity"], rel=1e-5)


def ranks_of(launcher: int) -> dict[int, int]:
    """{rank: pid} of the training processes a launcher started (its children; each in its own session)."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text() if entry.name.isdigit() else ""
            if f"\nPPid:\t{launcher}\n" not in status:
                continue
            environ = (entry / "environ").read_text().split("\0")
        except OSError:
            continue  # the process ended meanwhile
        ranks = [item.split("=", 1)[1] for item in environ if item.startswith("RANK=")]
        if ranks:
            found[int(ranks[0])] = int(entry.name)
    return found


def alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the launcher's processes through /proc")
def test_killing_one_process_stops_the_job_and_a_resume_on_two_machines_finishes_it(two_processes, tmp_path):
    command = [BIN / "accelerate", "launch", "--config_file", "configs/cpu_2_processes.yaml",
               "--main_process_port", str(free_port()), "-m", "mlm_helpers"]  # fmt: skip
    job = launch(command, tmp_path, 8, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    checkpoint = tmp_path / "out" / "checkpoints" / "step-00000010" / "manifest.json"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    ranks = ranks_of(job.pid)
    assert job.poll() is None and sorted(ranks) == [0, 1], "the job ended before a process could be killed"
    os.kill(ranks[1], signal.SIGKILL)
    killed = time.monotonic()
    try:
        _, err = job.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        pytest.fail("the job hung after one of its processes was killed")
    stopped_after = time.monotonic() - killed
    print(f"the job stopped {stopped_after:.1f} s after one of its processes was killed")  # shown with -s
    assert job.returncode != 0 and stopped_after < 90
    time.sleep(1)
    assert not any(alive(pid) for pid in ranks.values()), "a training process outlived its job"
    assert not (tmp_path / "model").exists()

    # The job restarts on two machines (here both on this one: configs/multi_node.yaml, one process
    # each, the first one's address given to both), as a cluster job often does. It still resumes.
    port = str(free_port())
    machines = [
        launch([BIN / "accelerate", "launch", "--config_file", "configs/multi_node.yaml", "--num_processes",
                "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port",
                port, "-m", "mlm_helpers"], tmp_path, 8, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for rank in (0, 1)
    ]  # fmt: skip
    outs = [finish(machine) for machine in machines]
    assert "Resuming from" in outs[0] and "2 processes on cpu" in outs[0]
    resumed, uninterrupted = weights(tmp_path), weights(two_processes["two"]["dir"])
    assert all((resumed[name] == uninterrupted[name]).all() for name in uninterrupted)


def launcher_environment(config: str) -> dict[str, str]:
    """What `accelerate launch --config_file configs/<config>` puts in its processes' environment for
    FSDP or DeepSpeed, built by Accelerate's own launch code."""
    args = ["--config_file", f"configs/{config}", "-m", "mlm_helpers"]
    parsed, defaults, _ = _validate_launch_command(launch_command_parser().parse_args(args))
    if not parsed.use_deepspeed:
        found = prepare_multi_gpu_env(parsed)
        return {k: v for k, v in found.items() if k.startswith("FSDP_") or k == "ACCELERATE_USE_FSDP"}
    parsed.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch does
    _, found = prepare_deepspeed_cmd_env(parsed)
    # DeepSpeed picks CUDA unless told; its CPU backend reduces over torch.distributed (gloo here).
    return {**{k: v for k, v in found.items() if k.startswith("ACCELERATE_")}, "DS_ACCELERATOR": "cpu"}


def checkpointed_weights(tmp: Path, step: int) -> dict:
    return load_file(tmp / "out" / "checkpoints" / f"step-{step:08d}" / "model.safetensors")


def largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[name] - b[name]).abs().max().item() for name in a)


def test_fsdp_trains_like_ddp_and_resumes_bit_identically_on_two_machines(two_processes, tmp_path):
    environment = {**launcher_environment("fsdp.yaml"), "PROBE_FORCE_FSDP": "1"}
    assert (environment["ACCELERATE_USE_FSDP"], environment["FSDP_VERSION"]) == ("true", "2")
    torchrun = [BIN / "torchrun", "--standalone", "--nproc_per_node", "2"]
    probe = [*torchrun, "tests/distributed_probe.py", str(tmp_path / "probe")]
    finish(launch(probe, tmp_path, 8, environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    ranks = [json.loads(p.read_text()) for p in sorted((tmp_path / "probe").glob("rank*.json"))]
    ddp = two_processes["two"]
    for rank, ddp_rank in zip(ranks, ddp["ranks"], strict=True):
        assert (rank["group_size"], rank["distributed_type"]) == (2, "DistributedType.FSDP")
        assert 0.45 < rank["share_held"] < 0.55  # each process holds half of the weights
        assert rank["examples"] == ddp_rank["examples"]
    # The same run as DDP: gradients reduce-scattered instead of all-reduced, the same updates.
    sharded = weights(tmp_path)
    assert largest_difference(sharded, weights(ddp["dir"])) < 1e-5
    after = [json.loads((d / "out" / "summary.json").read_text())["after"] for d in (tmp_path, ddp["dir"])]
    assert after[0]["loss"] == pytest.approx(after[1]["loss"], abs=1e-4)
    # scored by the main process on weights gathered from the shards
    assert after[0]["pseudo_perplexity"] == pytest.approx(after[1]["pseudo_perplexity"], rel=1e-4)

    # Checkpoints hold whole tensors, gathered from the shards: resume from step 35 and finish, this
    # time as two machines of one process each (two torchrun launchers on this host; both processes
    # have local rank 0, so anything that took the local rank for the global one would show here).
    shutil.rmtree(tmp_path / "out" / "checkpoints" / "step-00000040")
    shutil.rmtree(tmp_path / "model")
    port = str(free_port())
    machines = [
        launch([BIN / "torchrun", "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank),
                "--master_addr", "127.0.0.1", "--master_port", port, "tests/distributed_probe.py",
                str(tmp_path / "resumed")], tmp_path, 8, environment, stdout=subprocess.PIPE,
               stderr=subprocess.PIPE)
        for rank in (0, 1)
    ]  # fmt: skip
    out = [finish(machine) for machine in machines][0]
    assert "Resuming from" in out and "step 35 of 40" in out
    for rank in (0, 1):
        resumed = json.loads((tmp_path / "resumed" / f"rank{rank}.json").read_text())
        assert (resumed["group_size"], resumed["distributed_type"]) == (2, "DistributedType.FSDP")
        assert resumed["examples"] == ranks[rank]["examples"][-5 * 8 :]  # steps 36 to 40
    resumed = weights(tmp_path)
    assert all(torch.equal(resumed[name], sharded[name]) for name in sharded)

    # The same files as DDP writes: DDP resumes from an FSDP checkpoint.
    shutil.rmtree(tmp_path / "out" / "checkpoints" / "step-00000040")
    out = finish(launch([*torchrun, "-m", "mlm_helpers"], tmp_path, 8, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE))  # fmt: skip
    assert "step 35 of 40" in out
    assert largest_difference(weights(tmp_path), sharded) < 1e-5


needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="pip install -e .[deepspeed] (Linux)"
)


@needs_deepspeed
def test_deepspeed_zero2_trains_like_ddp_skips_a_nan_step_and_resumes_across_setups(two_processes, tmp_path):
    environment = {**launcher_environment("deepspeed.yaml"), "PROBE_FORCE_DEEPSPEED": "1"}
    assert (environment["ACCELERATE_USE_DEEPSPEED"], environment["ACCELERATE_DEEPSPEED_ZERO_STAGE"]) == (
        "true",
        "2",
    )
    torchrun = [BIN / "torchrun", "--standalone", "--nproc_per_node", "2"]
    # Two micro-batches of 4 per step: the same 8 examples per process and step as the DDP run's one
    # batch of 8, and the engine must step after the second only.
    accumulate = ("--gradient-accumulation-steps", "2")
    # Process 1's forward pass gives NaN in step 38: ZeRO finds it in the reduced gradients, and both
    # processes skip the step.
    probe = [*torchrun, "tests/distributed_probe.py", str(tmp_path / "probe")]
    finish(launch(probe, tmp_path, 4, {**environment, "PROBE_POISON": "1:38"}, accumulate,
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE))  # fmt: skip
    ranks = [json.loads(p.read_text()) for p in sorted((tmp_path / "probe").glob("rank*.json"))]
    ddp = two_processes["two"]
    for rank, ddp_rank in zip(ranks, ddp["ranks"], strict=True):
        assert (rank["group_size"], rank["distributed_type"]) == (2, "DistributedType.DEEPSPEED")
        assert 0.45 < rank["share_held"] < 0.55  # each process holds half of the fp32 weights and moments
        assert rank["examples"] == ddp_rank["examples"]
        mine = [gathered[rank["rank"]] for gathered in rank["fingerprints"]]
        assert mine[35] != mine[36] == mine[37]  # step 37 changed the weights, step 38 did not
    logs = [[json.loads(line) for line in (d / "out" / "metrics.jsonl").read_text().splitlines()]
            for d in (tmp_path, ddp["dir"])]  # fmt: skip
    deepspeed_log, ddp_log = ([r for r in log if "loss" in r] for log in logs)
    assert [r["skipped_steps"] for r in deepspeed_log] == [0, 0, 0, 1]  # steps 10, 20, 30, 40
    # The engine's gradient norm (before clipping) is DDP's: the loss was not divided again by the
    # number of micro-batches.
    for mine, theirs in zip(deepspeed_log[:3], ddp_log[:3], strict=True):
        assert mine["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-4)
    assert all(torch.isfinite(value).all() for value in weights(tmp_path).values())
    # Until then, the same run as DDP: gradients reduce-scattered into partitions, the same updates.
    assert largest_difference(checkpointed_weights(tmp_path, 35), checkpointed_weights(ddp["dir"], 35)) < 1e-5

    # Checkpoints hold whole tensors gathered from the partitions: resumed from step 35 without the
    # NaN, DeepSpeed finishes the run as DDP did.
    shutil.rmtree(tmp_path / "out" / "checkpoints" / "step-00000040")
    shutil.rmtree(tmp_path / "model")
    probe = [*torchrun, "tests/distributed_probe.py", str(tmp_path / "resumed")]
    out = finish(launch(probe, tmp_path, 4, environment, accumulate, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE))  # fmt: skip
    assert "step 35 of 40" in out
    resumed = json.loads((tmp_path / "resumed" / "rank0.json").read_text())
    assert resumed["distributed_type"] == "DistributedType.DEEPSPEED"
    assert largest_difference(weights(tmp_path), weights(ddp["dir"])) < 1e-5

    # The same files as DDP writes: DDP resumes from the DeepSpeed checkpoint.
    shutil.rmtree(tmp_path / "out" / "checkpoints" / "step-00000040")
    out = finish(launch([*torchrun, "-m", "mlm_helpers"], tmp_path, 4, extra=accumulate,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE))  # fmt: skip
    assert "step 35 of 40" in out
    assert largest_difference(weights(tmp_path), weights(ddp["dir"])) < 1e-5


def test_fsdp_told_to_split_tied_weights_stops_with_a_way_forward(tmp_path):
    # BertEmbeddings holds the input embedding, which is also the output projection (in the root unit).
    environment = {**launcher_environment("fsdp.yaml"), "PROBE_FORCE_FSDP": "1",
                   "FSDP_TRANSFORMER_CLS_TO_WRAP": "BertEmbeddings,BertLayer"}  # fmt: skip
    probe = [BIN / "torchrun", "--standalone", "--nproc_per_node", "2", "tests/distributed_probe.py",
             str(tmp_path / "probe")]  # fmt: skip
    job = launch(probe, tmp_path, 8, environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = job.communicate(timeout=120)
    assert job.returncode != 0
    assert "shard model.bert.embeddings (BertEmbeddings) on its own" in err
    assert "fsdp_transformer_layer_cls_to_wrap" in err and "shared with a parameter" not in err


def test_fsdp_shards_each_encoder_layer_and_keeps_tied_weights_in_one_unit():
    # What configs/fsdp.yaml's TRANSFORMER_BASED_WRAP without class names shards one by one. The
    # model's own list names BertEmbeddings too, which the test above shows FSDP cannot split off.
    module = SparseMaskedLM(tiny_bert(100))
    assert module._no_split_modules == ["BertLayer"]
    assert "BertEmbeddings" in module.model._no_split_modules
    assert distributed.tied_names(module) == {
        "model.cls.predictions.decoder.weight": "model.bert.embeddings.word_embeddings.weight",
        "model.cls.predictions.decoder.bias": "model.cls.predictions.bias",
    }


def test_held_out_rows_never_reach_any_process(tmp_path):
    # 3 files: split into whole files for 3 processes, row by row for 2.
    files = []
    for index in range(3):
        path = tmp_path / f"part{index}.txt"
        path.write_text("".join(f"file {index} line {n}\n" for n in range(40)) + "file 0 line 3\n")
        files.append(str(path))
    stream = open_stream(TextSource("unused", data_files=tuple(files)))
    held_out, training = split_stream(stream, eval_size=50, text_column="text")
    held = {row["text"] for row in held_out}
    everything = [row["text"] for row in stream]
    expected = Counter(text for text in everything if text not in held)
    for processes in (1, 2, 3):
        shares = [[row["text"] for row in shard_rows(training, rank, processes)] for rank in range(processes)]
        assert sum((Counter(share) for share in shares), Counter()) == expected
        assert not held & {text for share in shares for text in share}


def test_ready_made_accelerate_configs_load():
    expected = {
        "cpu_2_processes.yaml": ("MULTI_GPU", 2, True),
        "one_gpu.yaml": ("NO", 1, False),
        "multi_gpu.yaml": ("MULTI_GPU", 2, False),
        "multi_node.yaml": ("MULTI_GPU", 16, False),
        "fsdp.yaml": ("FSDP", 2, False),
        "deepspeed.yaml": ("DEEPSPEED", 2, False),
    }
    found = {path.name for path in (REPO / "configs").glob("*.yaml")}
    assert set(expected) <= found
    for name, (kind, processes, cpu) in expected.items():
        config = load_config_from_file(str(REPO / "configs" / name))
        assert (str(config.distributed_type).split(".")[-1], config.num_processes, config.use_cpu) == (
            kind,
            processes,
            cpu,
        )


def test_fsdp1_is_refused_with_a_way_forward(monkeypatch):
    # What an FSDP config without fsdp_version 2 gives on GPUs (on a CPU, Accelerate falls back to DDP).
    class Configured:
        def __init__(self, **kwargs):
            self.distributed_type, self.is_fsdp2, self.num_processes = DistributedType.FSDP, False, 1

    monkeypatch.setattr(distributed, "Accelerator", Configured)
    with pytest.raises(ConfigError, match=r"FSDP version 1 is not supported: set `fsdp_version: 2`"):
        distributed.make_accelerator("no")


@pytest.mark.parametrize("variable", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_a_sharding_config_on_cpus_says_what_runs_instead(monkeypatch, capsys, variable):
    # What `accelerate launch --config_file configs/fsdp.yaml` (or deepspeed.yaml) gives on a CPU.
    class Configured:
        def __init__(self, **kwargs):
            self.distributed_type, self.num_processes = DistributedType.MULTI_CPU, 1
            self.is_main_process = True

    monkeypatch.setattr(distributed, "Accelerator", Configured)
    monkeypatch.setenv(variable, "true")
    distributed.make_accelerator("no")
    asked = "FSDP" if variable.endswith("FSDP") else "DeepSpeed"
    assert f"asks for {asked}, which Accelerate runs on GPUs only" in capsys.readouterr().err
    monkeypatch.setenv(variable, "false")
    distributed.make_accelerator("no")
    assert capsys.readouterr().err == ""


def test_deepspeed_config_takes_the_runs_settings_and_refuses_what_the_loop_cannot_run():
    config = {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
              "gradient_accumulation_steps": "auto", "zero_optimization": {"stage": 2}}  # fmt: skip
    deepspeed_zero.configure(config, batch_size=8, accumulation=4, max_grad_norm=0.5, processes=2)
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (8, 4)
    assert (config["gradient_clipping"], config["train_batch_size"]) == (0.5, 64)
    deepspeed_zero.configure(config, batch_size=8, accumulation=4, max_grad_norm=0.5, processes=2)  # agrees

    refused = {
        r"stage 3 is not supported.*configs/fsdp.yaml": {"zero_optimization": {"stage": 3}},
        r"stage 0 is not supported.*configs/multi_gpu.yaml": {"zero_optimization": {"stage": 0}},
        r"sets offload_optimizer, optimizer: not supported.*Remove those entries": {
            "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
            "optimizer": {"type": "Adam"},
        },
        r'gradient_accumulation_steps to 1, but this run\'s --gradient-accumulation-steps is 4: .*"auto"': {
            "zero_optimization": {"stage": 1},
            "gradient_accumulation_steps": 1,
        },
        r"train_batch_size to 32, but this run's effective batch size is 64: set it to \"auto\"": {
            "zero_optimization": {"stage": 2},
            "train_batch_size": 32,
        },
    }
    for advice, given in refused.items():
        with pytest.raises(ConfigError, match=advice):
            deepspeed_zero.configure(given, batch_size=8, accumulation=4, max_grad_norm=1.0, processes=2)
