"""DeepSpeed ZeRO (stages 1 and 2) under this training loop: its config filled in from ours, and its
partitioned state read and written per parameter name, as every other setup writes it.

Accelerate builds the DeepSpeed engine; the loop stays ours. The engine steps the optimizer inside
`accelerator.backward` on the last micro-batch of a step, after clipping, and skips a step whose
gradient norm is not finite (then reports an infinite norm, which the loop counts as skipped).

ZeRO keeps the fp32 weights and the Adam moments of each process's 1/N slice of one flat buffer per
parameter group. `gathered_state` assembles whole tensors from the slices (one all-reduce each, so
every process calls it) into the same dicts `torch.distributed.checkpoint` gives for DDP and FSDP, so a
checkpoint written under DeepSpeed resumes without it and the other way round. deepspeed is an
optional dependency (`pip install -e .[deepspeed]`), imported only where a run uses it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..config import ConfigError

MOMENTS = ("exp_avg", "exp_avg_sq")  # AdamW's state besides its step count


def configure(config: dict, batch_size: int, accumulation: int, max_grad_norm: float, processes: int) -> None:
    """Fill the DeepSpeed config (Accelerate's `deepspeed_plugin.deepspeed_config`) with this run's batch
    size, accumulation and clipping, and refuse what the loop cannot run. Values set to "auto" or left
    out take the run's; a different explicit value raises ConfigError."""
    zero = config.get("zero_optimization", {})
    stage = zero.get("stage", 0)
    if stage not in (1, 2):
        raise ConfigError(
            f"DeepSpeed ZeRO stage {stage} is not supported; use stage 1 or 2 (configs/deepspeed.yaml). "
            "To shard the weights too, use FSDP2 (configs/fsdp.yaml); without sharding, "
            "DistributedDataParallel (configs/multi_gpu.yaml)."
        )
    offloaded = [key for key in ("offload_optimizer", "offload_param")
                 if str(zero.get(key, {}).get("device", "none")).lower() != "none"]  # fmt: skip
    owned = [key for key in ("optimizer", "scheduler") if key in config]
    if offloaded or owned:
        raise ConfigError(
            f"The DeepSpeed config sets {', '.join(offloaded + owned)}: not supported, because this training "
            "loop owns the optimizer (AdamW) and the learning-rate schedule and keeps them on the "
            "accelerator. Remove those entries."
        )
    ours = {
        "train_micro_batch_size_per_gpu": (batch_size, "--batch-size"),
        "gradient_accumulation_steps": (accumulation, "--gradient-accumulation-steps"),
        "gradient_clipping": (max_grad_norm, "--max-grad-norm"),
        "train_batch_size": (batch_size * accumulation * processes, "effective batch size"),
    }
    for key, (value, what) in ours.items():
        given = config.get(key, "auto")
        if given != "auto" and given != value:
            raise ConfigError(
                f"The DeepSpeed config sets {key} to {given}, but this run's {what} is {value}: set it "
                'to "auto" in the DeepSpeed config (the run fills it in), or make the two agree.'
            )
        config[key] = value


def is_partitioned(model: torch.nn.Module) -> bool:
    """Whether ZeRO holds this model's fp32 weights and optimizer state in partitions (it marks the
    parameters it links to its flat buffers)."""
    return any(hasattr(param, "_hp_mapping") for param in model.parameters())


def _names(model: torch.nn.Module) -> dict[int, str]:
    return {id(param): name for name, param in model.named_parameters()}


def _zero(optimizer) -> torch.optim.Optimizer:
    """The ZeRO optimizer inside Accelerate's wrapper (its `.optimizer` is our AdamW)."""
    return getattr(optimizer, "optimizer", optimizer)


def gathered_state(model: torch.nn.Module, optimizer=None) -> tuple[dict, dict]:
    """The whole model's fp32 weights (with its buffers) and the optimizer's state, keyed by parameter
    name as `torch.distributed.checkpoint` keys them, on the CPU of the main process; other processes
    get empty dicts. Collective: every process calls it."""
    from deepspeed.utils import safe_get_full_fp32_param  # an optional dependency

    main = dist.get_rank() == 0
    state = {name: value.detach().cpu() for name, value in model.state_dict().items()} if main else {}
    for name, param in model.named_parameters():
        whole = safe_get_full_fp32_param(param)  # an all-reduce: every process takes part
        if main:
            state[name] = whole.cpu()
    if optimizer is None:
        return state, {}
    zero = _zero(optimizer)
    names = _names(model)
    groups, moments = [], {}
    for index, params in enumerate(zero.bit16_groups):
        flat = zero.single_partition_of_fp32_groups[index]
        hyper = {k: v for k, v in zero.optimizer.param_groups[index].items() if k != "params"}
        groups.append({**hyper, "params": [names[id(p)] for p in params]})
        found = zero.optimizer.state.get(flat, {})
        if not found:  # Adam has no state before its first step
            continue
        # Read from the flat buffers, not with deepspeed's safe_get_full_optimizer_state: deepspeed
        # 0.19.8 links each parameter to them after the first group's first step, when the other
        # groups' buffers do not exist yet, and then raises for every parameter of those groups.
        for param in params:
            whole = {key: _gather(param, found[key], zero.dp_process_group).cpu() for key in MOMENTS}
            moments[names[id(param)]] = {"step": found["step"].detach().cpu().clone(), **whole}
    if not main:
        return {}, {}
    return state, {"state": moments, "param_groups": groups}


@torch.no_grad()
def load_gathered_state(model: torch.nn.Module, optimizer, model_state: dict, optimizer_state: dict) -> None:
    """Load whole tensors (as `gathered_state` returns them) into this process's partitions and weights."""
    model.load_state_dict(model_state)  # the weights the forward pass uses, and the buffers
    names = _names(model)
    zero = _zero(optimizer)
    for index, params in enumerate(zero.bit16_groups):
        flat = zero.single_partition_of_fp32_groups[index]
        for param in params:  # this process's slice of the fp32 weights
            _scatter(param, model_state[names[id(param)]], flat)
        hyper = optimizer_state["param_groups"][index]
        zero.optimizer.param_groups[index].update({k: v for k, v in hyper.items() if k != "params"})
        # Adam creates its state at the first step; a resumed run has none yet, so build the flat
        # buffers here, and ZeRO links them to each parameter's slice at the next step. A parameter
        # that never had a gradient has no state (torch's AdamW): its slice stays zero.
        saved = [(param, optimizer_state["state"].get(names[id(param)])) for param in params]
        saved = [(param, state) for param, state in saved if state is not None]
        if not saved:
            continue
        found = {"step": saved[0][1]["step"].to(flat.device)}
        for key in MOMENTS:
            found[key] = torch.zeros_like(flat)
            for param, state in saved:
                _scatter(param, state[key], found[key])
        zero.optimizer.state[flat] = found


@torch.no_grad()
def _gather(param: torch.nn.Parameter, flat: torch.Tensor, group) -> torch.Tensor:
    """`param`'s whole value, from each process's slice of it in its own `flat` buffer (an all-reduce
    of the slices, each in its place and zeros elsewhere)."""
    whole = torch.zeros(param.numel(), dtype=flat.dtype, device=flat.device)
    mapping = param._hp_mapping
    if mapping is not None:  # None: no part of this parameter lies in this process's partition
        source, target = mapping.lp_fragment_address, mapping.hp_fragment_address
        whole.narrow(0, source.start, source.numel).copy_(flat.narrow(0, target.start, target.numel))
    dist.all_reduce(whole, group=group)
    return whole.view(param.shape)


def _scatter(param: torch.nn.Parameter, whole: torch.Tensor, flat: torch.Tensor) -> None:
    """Copy this process's slice of `whole` (a value of `param`'s shape) to its place in `flat`."""
    mapping = param._hp_mapping
    if mapping is not None:
        source, target = mapping.lp_fragment_address, mapping.hp_fragment_address
        piece = whole.flatten().narrow(0, source.start, source.numel)
        flat.narrow(0, target.start, target.numel).copy_(piece)
