"""`mlm_helpers train` with probes, for tests/test_distributed.py to launch under torchrun.

    torchrun --standalone --nproc_per_node 2 tests/distributed_probe.py PROBE_DIR train [train flags]

The real command runs unchanged; the probe only watches. Each process writes PROBE_DIR/rank<N>.json:
its rank, the size of the process group torch.distributed formed, a hash of every example it trained
on (the original tokens, before masking), after every optimizer step the fingerprints of all
processes' weights (their own shards, under FSDP) gathered at that step, and the share of the model's
weights the process holds.

With PROBE_FORCE_FSDP=1 it does one thing more. Accelerate turns an FSDP config (the environment
`accelerate launch` sets from it) into FSDP on accelerators only: CPU processes get DDP. The probe
then does what Accelerate's state does on GPUs, so that everything after it, Accelerate's FSDP2
preparation, gradient sync and clipping, and our code, runs as it would there.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.tensor import DTensor

from mlm_helpers import cli, distributed, run
from mlm_helpers.distributed import gather_from_processes


def force_fsdp_on_cpu() -> None:
    real = distributed.Accelerator

    def accelerator(**kwargs):
        made = real(**kwargs)
        plugin = FullyShardedDataParallelPlugin()  # read from the launcher's environment
        if made.mixed_precision != "no":
            plugin.set_mixed_precision(made.mixed_precision)
        made.state.fsdp_plugin = plugin
        made.state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        return made

    distributed.Accelerator = accelerator


def local(param: torch.Tensor) -> torch.Tensor:
    return param.to_local() if isinstance(param, DTensor) else param


def main() -> int:
    probe_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    record = {"examples": [], "fingerprints": []}
    real_loop = run.train_loop

    def probed_loop(module, optimizer, schedule, batches, accelerator, *, on_step_end, **kwargs):
        record["rank"] = accelerator.process_index
        record["group_size"] = dist.get_world_size() if dist.is_initialized() else 1
        record["distributed_type"] = str(accelerator.distributed_type)

        # The optimizer's parameters: the shards under FSDP, whether or not a forward pass left the
        # module holding gathered copies.
        def weights():
            return [param for group in optimizer.param_groups for param in group["params"]]

        record["share_held"] = sum(local(p).numel() for p in weights()) / sum(p.numel() for p in weights())

        def consumed():
            for batch in batches:
                original = torch.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])
                for ids, keep in zip(original, batch["attention_mask"].bool(), strict=True):
                    record["examples"].append(hashlib.sha1(ids[keep].numpy().tobytes()).hexdigest())
                yield batch

        def step_end(step: int) -> None:
            flat = torch.cat([local(p).detach().flatten() for p in weights()])
            mine = hashlib.sha1(flat.numpy().tobytes()).hexdigest()
            record["fingerprints"].append(gather_from_processes(accelerator, mine))
            on_step_end(step)

        return real_loop(module, optimizer, schedule, consumed(), accelerator, on_step_end=step_end, **kwargs)

    run.train_loop = probed_loop
    if os.environ.get("PROBE_FORCE_FSDP") == "1":
        force_fsdp_on_cpu()
    code = cli.main(argv)
    probe_dir.mkdir(parents=True, exist_ok=True)
    (probe_dir / f"rank{record['rank']}.json").write_text(json.dumps(record), encoding="utf-8")
    return code


if __name__ == "__main__":
    sys.exit(main())
