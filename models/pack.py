"""Seed packs: the K seeds of one configuration trained as one fused model.

A family writes each training step once, for one member, as a loss function
of its networks and inputs, and runs it through an engine:

- `Solo`, a family's own: the networks are its modules, the step is today's
  zero_grad / backward / optimiser step, random draws come from the global
  generator;
- `Fused`, a pack's: every network's K copies are stacked along a leading
  member dimension, the loss function runs on all K at once under
  torch.func.vmap (functional_call of one weightless copy of the network), the
  K losses are summed so each member's gradient is its own, and one optimiser
  of the family's kind steps the stacked tensors (the optimisers offered are
  elementwise, so that step is each member's own step). Random draws are made
  member by member from each member's own generator, so a member sees the
  streams it would see trained alone.

Randomness drawn inside a network's forward pass (dropout, a StyleGAN's noise
inputs and style mixing) cannot be given per-member generators under vmap: in
a pack it comes from the global generator, one draw for all K members.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

LossFn = Callable[..., tuple[Tensor, dict[str, Tensor]]]


class Engine:
    """What a family's training steps run through: `Solo` or `Fused`."""

    optimizers: dict[str, torch.optim.Optimizer]
    norms: dict[str, tuple[Tensor | float, int]]  # optimiser -> (sum of norms, steps)

    def step(
        self,
        opt: str,
        loss_fn: LossFn,
        *inputs: Any,
        fixed: Sequence[str] = (),
        clip: float = 0.0,
    ) -> dict[str, Tensor]:
        """One optimiser step of `opt` on loss_fn(nets, *inputs) -> (loss,
        metrics); the networks named in `fixed` take part in the loss but get
        no gradient; `clip` > 0 clips the gradient's norm. The norm before
        clipping is summed for grad_norms()."""
        losses, metrics = self._losses(loss_fn, fixed, *inputs)
        optimizer = self.optimizers[opt]
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # in a pack, each member's gradient is its own
        self._track(opt, self._clip(optimizer, clip) if clip else self._grad_norm(optimizer))
        optimizer.step()
        self._settle(fixed)
        return {k: v.detach() for k, v in metrics.items()}

    def _losses(self, loss_fn: LossFn, fixed: Sequence[str], *inputs: Any) -> Any:
        raise NotImplementedError

    def order(self, fn: Callable[[torch.Generator | None], Tensor]) -> Tensor:
        """fn(generator) for the data's order (shuffles, picks of training
        samples), for every member: the noise's stream (`draw`), unless a
        member's data has a stream of its own (seeded apart: data_seed)."""
        raise NotImplementedError

    def _track(self, opt: str, norm: Tensor) -> None:
        """Sum the step's gradient norm on the device (no host sync)."""
        total, steps = self.norms.get(opt, (0.0, 0))
        self.norms[opt] = (total + norm.detach(), steps + 1)

    def grad_norms(self) -> dict[str, Tensor]:
        """Each optimiser's mean gradient norm (before any clipping) over the
        steps since the last call (device tensors; in a pack, one per
        member), named grad_norm_<optimiser>, or grad_norm for a family's
        only one; the sums start again."""
        sums, self.norms = self.norms, {}
        one = len(self.optimizers) == 1
        return {
            "grad_norm" if one else f"grad_norm_{k}": total / steps
            for k, (total, steps) in sums.items()
        }

    def _grad_norm(self, optimizer: torch.optim.Optimizer) -> Tensor:
        raise NotImplementedError

    def _clip(self, optimizer: torch.optim.Optimizer, max_norm: float) -> Tensor:
        raise NotImplementedError

    def _settle(self, fixed: Sequence[str]) -> None:
        """After the optimiser step."""


class Solo(Engine):
    """One member: a family's networks and optimisers as they are."""

    size = 1

    def __init__(self, member: Any, nets: dict[str, nn.Module], optimizers: dict[str, Any]) -> None:
        self.member, self.nets, self.optimizers = member, nets, optimizers
        self.norms = {}

    data_generator: torch.Generator | None = None  # the data's own stream, where seeded apart

    def draw(self, fn: Callable[[torch.Generator | None], Tensor]) -> Tensor:
        """fn(generator) for every member; None: the global generator."""
        return fn(None)

    def order(self, fn: Callable[[torch.Generator | None], Tensor]) -> Tensor:
        return fn(self.data_generator)

    def each(self, fn: Callable[..., Any], *tensors: Tensor | None) -> Any:
        """fn(member, *its slices of tensors, its generator) for every member:
        state a member keeps outside its networks (a replay buffer)."""
        return fn(self.member, *tensors, None)

    def modules(self, net: str) -> list[nn.Module]:
        """Every module standing for network `net` (to set its mode or stage)."""
        return [self.nets[net]]

    @torch.no_grad()
    def call(self, net: str, *args: Any) -> Tensor:
        """Network `net` on args, without gradients."""
        return self.nets[net](*args)

    def _losses(self, loss_fn: LossFn, fixed: Sequence[str], *inputs: Any) -> Any:
        for name in fixed:
            self.nets[name].requires_grad_(False)
        return loss_fn(self.nets, *inputs)

    def _clip(self, optimizer: torch.optim.Optimizer, max_norm: float) -> Tensor:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    @torch.no_grad()
    def _grad_norm(self, optimizer: torch.optim.Optimizer) -> Tensor:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return torch.zeros(())
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))

    def _settle(self, fixed: Sequence[str]) -> None:
        for name in fixed:
            self.nets[name].requires_grad_(True)

    lead: tuple[int, ...] = ()  # the member dimension tensors carry: none alone

    @torch.no_grad()
    def update(self, net: str, fn: Callable[[dict[str, Tensor]], None]) -> None:
        """fn(network `net`'s parameters and buffers by name), in place and
        without gradients: an update outside the optimiser step."""
        fn(dict([*self.nets[net].named_parameters(), *self.nets[net].named_buffers()]))

    @torch.no_grad()
    def lerp(self, dst: str, src: str, weight: float) -> None:
        """Network dst's parameters move `weight` of the way to src's (an EMA)."""
        dst_params, src_params = self.nets[dst].parameters(), self.nets[src].parameters()
        torch._foreach_lerp_(list(dst_params), list(src_params), weight)


class Stacked:
    """K same-shaped networks as stacked parameters and buffers (leading
    dimension: the member), and one weightless copy to call them through."""

    def __init__(self, nets: list[nn.Module]) -> None:
        self.nets = nets
        self.base = copy.deepcopy(nets[0]).to("meta")
        params, self.buffers = stack_module_state(nets)
        trains = dict(nets[0].named_parameters())
        self.params = {
            k: nn.Parameter(v.detach(), requires_grad=trains[k].requires_grad)
            for k, v in params.items()
        }

    def bound(self, params: dict[str, Tensor], buffers: dict[str, Tensor]) -> Callable:
        """The network of one member (inside vmap) as a function of its inputs."""
        return lambda *args: functional_call(self.base, (params, buffers), args)

    def sync(self) -> None:
        """Each member's own module takes its slice (for evaluation and sampling)."""
        with torch.no_grad():
            for k, net in enumerate(self.nets):
                for name, t in [*net.named_parameters(), *net.named_buffers()]:
                    t.copy_((self.params.get(name, self.buffers.get(name)))[k])

    def slices(self, k: int) -> dict[str, Tensor]:
        return {n: t[k].clone() for n, t in [*self.params.items(), *self.buffers.items()]}

    def put(self, k: int, saved: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for n, t in [*self.params.items(), *self.buffers.items()]:
                t[k] = saved[n]


class Fused(Engine):
    """K members of one family, each network stacked (see the module doc);
    `engines`: the members' own Solo engines, `generators`: their streams."""

    def __init__(self, engines: list[Solo], generators: list[torch.Generator]) -> None:
        self.size = len(engines)
        self.engines = engines  # each keeps its data stream (order)
        self.members = [e.member for e in engines]
        self.stacks = {n: Stacked([e.nets[n] for e in engines]) for n in engines[0].nets}
        self.generators = generators
        owner = {
            id(p): (net, name)
            for net, module in engines[0].nets.items()
            for name, p in module.named_parameters()
        }
        self.optimizers = {
            key: _stacked_optimizer(opt, owner, self.stacks)
            for key, opt in engines[0].optimizers.items()
        }
        self.frozen: dict[int, dict[str, dict[str, Tensor]]] = {}
        self.norms = {}

    def draw(self, fn: Callable[[torch.Generator | None], Tensor]) -> Tensor:
        return torch.stack([fn(g) for g in self.generators])

    def order(self, fn: Callable[[torch.Generator | None], Tensor]) -> Tensor:
        own = [e.data_generator for e in self.engines]
        return torch.stack([fn(d or g) for d, g in zip(own, self.generators, strict=True)])

    def each(self, fn: Callable[..., Any], *tensors: Tensor | None) -> Any:
        out = [
            fn(m, *(None if t is None else t[k] for t in tensors), g)
            for k, (m, g) in enumerate(zip(self.members, self.generators, strict=True))
        ]
        if isinstance(out[0], tuple):
            return tuple(_stack([o[i] for o in out]) for i in range(len(out[0])))
        return _stack(out)

    def modules(self, net: str) -> list[nn.Module]:
        return [self.stacks[net].base, *self.stacks[net].nets]

    def _run(self, fn: Callable, detach: Sequence[str], *inputs: Any) -> Any:
        names = list(self.stacks)

        def member(params: dict, buffers: dict, *args: Any) -> Any:
            nets = {n: self.stacks[n].bound(params[n], buffers[n]) for n in names}
            return fn(nets, *args)

        params = {
            n: {k: v.detach() if n in detach else v for k, v in self.stacks[n].params.items()}
            for n in names
        }
        buffers = {n: self.stacks[n].buffers for n in names}
        dims = tuple(None if x is None else 0 for x in inputs)
        return vmap(member, in_dims=(0, 0, *dims), randomness="different")(params, buffers, *inputs)

    def call(self, net: str, *args: Any) -> Tensor:
        with torch.no_grad():
            return self._run(lambda nets, *a: nets[net](*a), list(self.stacks), *args)

    def _losses(self, loss_fn: LossFn, fixed: Sequence[str], *inputs: Any) -> Any:
        return self._run(loss_fn, fixed, *inputs)

    @torch.no_grad()
    def _clip(self, optimizer: torch.optim.Optimizer, max_norm: float) -> Tensor:
        """clip_grad_norm_ member by member over stacked gradients: each
        member's norm over all its parameters, its gradients scaled as
        clip_grad_norm_ would scale them alone; the (K,) norms before."""
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms = self._grad_norm(optimizer)
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))
        return norms

    @torch.no_grad()
    def _grad_norm(self, optimizer: torch.optim.Optimizer) -> Tensor:
        """Each member's gradient norm over all its parameters, (K,)."""
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return torch.zeros(self.size)
        return torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0).sqrt()

    def _settle(self, fixed: Sequence[str]) -> None:
        self._hold_frozen()

    @property
    def lead(self) -> tuple[int, ...]:
        return (self.size,)

    @torch.no_grad()
    def update(self, net: str, fn: Callable[[dict[str, Tensor]], None]) -> None:
        fn({**self.stacks[net].params, **self.stacks[net].buffers})
        self._hold_frozen()

    @torch.no_grad()
    def lerp(self, dst: str, src: str, weight: float) -> None:
        to, by = self.stacks[dst].params, self.stacks[src].params
        torch._foreach_lerp_([to[k] for k in to], [by[k] for k in to], weight)
        self._hold_frozen()

    def freeze(self, k: int) -> None:
        """Member k stops training: its networks stay as they are now."""
        self.frozen[k] = {n: s.slices(k) for n, s in self.stacks.items()}

    def _hold_frozen(self) -> None:
        for k, saved in self.frozen.items():
            for n, s in self.stacks.items():
                s.put(k, saved[n])

    def sync(self) -> None:
        for s in self.stacks.values():
            s.sync()

    def state_dict(self) -> dict:
        return {
            "params": {n: s.params for n, s in self.stacks.items()},
            "buffers": {n: s.buffers for n, s in self.stacks.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "generators": [g.get_state() for g in self.generators],
            "frozen": sorted(self.frozen),
        }

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for n, s in self.stacks.items():
                for k, t in s.params.items():
                    t.copy_(state["params"][n][k])
                for k, t in s.buffers.items():
                    t.copy_(state["buffers"][n][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for g, s in zip(self.generators, state["generators"], strict=True):
            g.set_state(s.cpu())
        for k in state["frozen"]:
            self.freeze(k)


def _stack(tensors: list[Tensor | None]) -> Tensor | None:
    return None if tensors[0] is None else torch.stack(tensors)


def _stacked_optimizer(
    opt: torch.optim.Optimizer, owner: dict[int, tuple[str, str]], stacks: dict[str, Stacked]
) -> torch.optim.Optimizer:
    """An optimiser of opt's kind and settings over the stacked parameters,
    group for group (a StyleGAN mapping network keeps its own learning rate)."""
    groups = []
    for group in opt.param_groups:
        params = [stacks[owner[id(p)][0]].params[owner[id(p)][1]] for p in group["params"]]
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": params})
    return type(opt)(groups)


def fuse(make: Callable[[Any], Any], seeds: Sequence[Any], device: torch.device) -> list[Any]:
    """The members of a pack, built one by one (`make(seed)` seeds the global
    generators and builds one family; a seed may be a number or what the
    caller seeds from); each member's generator starts where
    its build left the global one, so its draws are what it would draw
    trained alone. The first member then trains them all (a Fused engine)."""
    members, generators = [], []
    for seed in seeds:
        members.append(make(seed))
        g = torch.Generator(device)
        cuda = device.type == "cuda"
        g.set_state(torch.cuda.get_rng_state(device) if cuda else torch.get_rng_state())
        generators.append(g)
    members[0].engine = Fused([m.engine for m in members], generators)
    return members


class Pack:
    """The trial's view of its members, one (a family alone) or a fused
    pack: per-member metrics, freezing, syncing for evaluation, checkpoints."""

    def __init__(self, members: list[Any]) -> None:
        self.members, self.leader = members, members[0]
        self.engine: Engine | None = getattr(self.leader, "engine", None)

    @property
    def fused(self) -> bool:
        return isinstance(self.engine, Fused)

    def train_epoch(self) -> list[dict[str, Tensor]]:
        """Each member's training metrics for one epoch."""
        metrics = self.leader.train_epoch()
        if self.engine is not None:  # the gradient norms of the epoch's steps
            metrics = {**self.engine.grad_norms(), **metrics}
        if not self.fused:
            return [metrics]
        return [
            {k: v[i] if isinstance(v, Tensor) and v.dim() else v for k, v in metrics.items()}
            for i in range(len(self.members))
        ]

    def freeze(self, k: int) -> None:
        if self.fused:
            self.engine.freeze(k)

    def sync(self) -> None:
        """Each member's own networks and counters take its current values."""
        if not self.fused:
            return
        self.engine.sync()
        for member in self.members[1:]:
            for name in self.leader.counters:
                setattr(member, name, getattr(self.leader, name))

    def state_dict(self) -> dict:
        if not self.fused:
            return self.leader.state_dict()
        self.sync()
        return {
            "members": [m.state_dict() for m in self.members],
            "fused": self.engine.state_dict(),
        }

    def take_over(self, state: dict) -> None:
        """Another pack's state (a clone, under population-based training):
        its weights and optimiser moments, with this pack's own optimiser
        settings (learning rates, betas), which its config may have changed."""
        own = {
            k: [{h: v for h, v in g.items() if h != "params"} for g in o.param_groups]
            for k, o in self.engine.optimizers.items()
        }
        self.load_state_dict(state)
        for k, o in self.engine.optimizers.items():
            for group, settings in zip(o.param_groups, own[k], strict=True):
                group.update(settings)

    def data_streams(self) -> list[torch.Generator]:
        """The members' own data-order generators (none unless seeded apart):
        checkpointed beside the global stream, so a retry draws on."""
        engines = self.engine.engines if self.fused else [self.engine]
        return [e.data_generator for e in engines if getattr(e, "data_generator", None)]

    def load_state_dict(self, state: dict) -> None:
        if not self.fused:
            self.leader.load_state_dict(state)
            return
        for member, s in zip(self.members, state["members"], strict=True):
            member.load_state_dict(s)
        self.engine.load_state_dict(state["fused"])
