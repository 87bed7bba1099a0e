"""`mlm_helpers train` with probes, for tests/test_distributed.py to launch under torchrun.

    torchrun --standalone --nproc_per_node 2 tests/distributed_probe.py PROBE_DIR train [train flags]

The real command runs unchanged; the probe only watches. Each process writes PROBE_DIR/rank<N>.json:
its rank, the size of the process group torch.distributed formed, a hash of every example it trained
on (the original tokens, before masking), and after every optimizer step the weights' fingerprints of
all processes, gathered at that step.
"""

import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from mlm_helpers import cli, run
from mlm_helpers.distributed import gather_from_processes


def main() -> int:
    probe_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    record = {"examples": [], "fingerprints": []}
    real_loop = run.train_loop

    def probed_loop(module, optimizer, schedule, batches, accelerator, *, on_step_end, **kwargs):
        record["rank"] = accelerator.process_index
        record["group_size"] = dist.get_world_size() if dist.is_initialized() else 1
        record["distributed_type"] = str(accelerator.distributed_type)
        weights = accelerator.unwrap_model(module).parameters

        def consumed():
            for batch in batches:
                original = torch.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])
                for ids, keep in zip(original, batch["attention_mask"].bool(), strict=True):
                    record["examples"].append(hashlib.sha1(ids[keep].numpy().tobytes()).hexdigest())
                yield batch

        def step_end(step: int) -> None:
            flat = torch.cat([p.detach().flatten() for p in weights()])
            mine = hashlib.sha1(flat.numpy().tobytes()).hexdigest()
            record["fingerprints"].append(gather_from_processes(accelerator, mine))
            on_step_end(step)

        return real_loop(module, optimizer, schedule, consumed(), accelerator, on_step_end=step_end, **kwargs)

    run.train_loop = probed_loop
    code = cli.main(argv)
    probe_dir.mkdir(parents=True, exist_ok=True)
    (probe_dir / f"rank{record['rank']}.json").write_text(json.dumps(record), encoding="utf-8")
    return code


if __name__ == "__main__":
    sys.exit(main())
