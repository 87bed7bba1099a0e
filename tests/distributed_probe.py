"""`mlm_helpers train` with probes, for tests/test_distributed.py to launch under torchrun.

    torchrun --standalone --nproc_per_node 2 tests/distributed_probe.py PROBE_DIR train [train flags]

The real run goes unchanged, watched by the probe through `train`'s `loop` parameter (without the
command's closing report). Each process writes PROBE_DIR/rank<N>.json: its rank, the size of the
process group torch.distributed formed, a hash of every example it trained on (the original tokens,
before masking), after every optimizer step the fingerprints of all processes' weights (their own
shards, under FSDP) gathered at that step, and the share of the model's weights the process holds.
With PROBE_POISON=RANK:STEP one process's forward pass gives NaN in one step.

With PROBE_FORCE_FSDP=1 or PROBE_FORCE_DEEPSPEED=1 it does one thing more. Accelerate turns an FSDP
or DeepSpeed config (the environment `accelerate launch` sets from it) into FSDP or DeepSpeed on
accelerators only: CPU processes get DDP. The probe then does what Accelerate's state does on GPUs,
so that everything after it, Accelerate's FSDP2 or DeepSpeed preparation, gradient sync and
clipping, and our code, runs as it would there.
"""

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate.state import PartialState
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.tensor import DTensor

from mlm_helpers import flags
from mlm_helpers.training import distributed
from mlm_helpers.training.distributed import gather_from_processes
from mlm_helpers.training.loop import train_loop
from mlm_helpers.training.run import train

record = {"examples": [], "fingerprints": []}  # what this process writes to PROBE_DIR/rank<N>.json


def force_on_cpu(kind: DistributedType, configure) -> None:
    """Make Accelerate's state `kind` once `configure(accelerator)` has set its plugin, as
    AcceleratorState does on GPUs: in the Accelerator's state and in the state shared by all."""
    real = distributed.Accelerator

    def accelerator(**kwargs):
        made = real(**kwargs)
        configure(made)
        made.state.distributed_type = kind
        PartialState._shared_state["distributed_type"] = kind
        return made

    distributed.Accelerator = accelerator


def fsdp_plugin(made) -> None:
    plugin = FullyShardedDataParallelPlugin()  # read from the launcher's environment
    if made.mixed_precision != "no":
        plugin.set_mixed_precision(made.mixed_precision)
    made.state.fsdp_plugin = plugin


def deepspeed_plugin(made) -> None:
    # DeepSpeed's CPU backend compiles a shared-memory all-reduce for inference when it starts (about
    # 50 s here, again in every fresh environment), after probing every op with the compiler. ZeRO
    # training reduces through torch.distributed, and on GPUs the op does not exist: skip both.
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__ = {}
    plugin = DeepSpeedPlugin()  # read from the launcher's environment
    plugin.set_mixed_precision(made.mixed_precision)
    plugin.select(_from_accelerator_state=True)
    # DeepSpeed casts the model itself: Accelerate's own mixed precision (autocast) stays off.
    made.native_amp, made.state._mixed_precision = False, "no"
    made.state.deepspeed_plugins = plugin
    made.deepspeed_engine_wrapped = None


def poison(unwrapped, rank: int, start_step: int) -> None:
    """With PROBE_POISON=RANK:STEP, process RANK's embeddings give NaN in training step STEP."""
    if "PROBE_POISON" not in os.environ:
        return
    poisoned_rank, poisoned_step = map(int, os.environ["PROBE_POISON"].split(":"))
    record["step"] = start_step

    def hook(module, inputs, output):
        due = module.training and rank == poisoned_rank and record["step"] + 1 == poisoned_step
        return output * float("nan") if due else output

    unwrapped.model.bert.embeddings.register_forward_hook(hook)


def local(param: torch.Tensor) -> torch.Tensor:
    return param.to_local() if isinstance(param, DTensor) else param


def main() -> int:
    probe_dir, argv = Path(sys.argv[1]), sys.argv[2:]

    def probed_loop(module, optimizer, schedule, batches, accelerator, args, start_step, hooks):
        record["rank"] = accelerator.process_index
        record["group_size"] = dist.get_world_size() if dist.is_initialized() else 1
        record["distributed_type"] = str(accelerator.distributed_type)

        # The optimizer's parameters: the shards under FSDP, whether or not a forward pass left the
        # module holding gathered copies; under DeepSpeed, this process's slice of the fp32 weights.
        def weights():
            return [param for group in optimizer.param_groups for param in group["params"]]

        held = sum(local(p).numel() for p in weights())
        record["share_held"] = held / sum(p.numel() for p in module.parameters())
        poison(accelerator.unwrap_model(module), accelerator.process_index, start_step)

        def consumed():
            for batch in batches:
                original = torch.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])
                for ids, keep in zip(original, batch["attention_mask"].bool(), strict=True):
                    record["examples"].append(hashlib.sha1(ids[keep].numpy().tobytes()).hexdigest())
                yield batch

        def step_end(step: int) -> None:
            record["step"] = step
            flat = torch.cat([local(p).detach().flatten() for p in weights()])
            mine = hashlib.sha1(flat.numpy().tobytes()).hexdigest()
            record["fingerprints"].append(gather_from_processes(accelerator, mine))
            hooks.on_step_end(step)

        probed = dataclasses.replace(hooks, on_step_end=step_end)
        return train_loop(module, optimizer, schedule, consumed(), accelerator, args, start_step, probed)

    if os.environ.get("PROBE_FORCE_FSDP") == "1":
        force_on_cpu(DistributedType.FSDP, fsdp_plugin)
    if os.environ.get("PROBE_FORCE_DEEPSPEED") == "1":
        force_on_cpu(DistributedType.DEEPSPEED, deepspeed_plugin)
    # The command line's own parsing, then `train` with the probed loop in its `loop` seam; an error
    # leaves with its traceback, which the tests read for the message.
    args = flags.build_parser().parse_args(argv)
    train(flags.config_from_args(args), loop=probed_loop)
    probe_dir.mkdir(parents=True, exist_ok=True)
    (probe_dir / f"rank{record['rank']}.json").write_text(json.dumps(record), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
