"""Collecting the Energy-Mask terms of every forward pass: ``with ersm.collect_terms(model) as collected``.

The layer (``ersm/layer.py``) returns only the masked features; :func:`collect_terms` gathers
the :class:`~ersm.layer.EnergyTerms` of every forward of every EnergyMask in a model while its
block is open, and ``ersm.regularization_loss(collected)`` is the token-weighted mean over all
of them (``ersm.loss``). The block may hold several forwards (micro-batches); the collector
stays readable after the block closes.

How collection works, and why this way: each layer owns a small tap list (``_taps``) made in
``__init__``; entering :func:`collect_terms` adds the collector to the tap list of each
EnergyMask in the model, leaving removes it, and ``forward`` hands its terms to every collector
on its list. This survives:

- ``DataParallel``: a replica is a shallow copy of the module's ``__dict__``, so every replica
  holds the same tap list and hands its terms, from its own thread and device, to the same
  collector (a lock guards the collector's list). Records are read back ordered by (forward
  pass, device index, layer), which is DataParallel's batch order, so the result does not depend
  on which replica's thread finished first.
- ``DistributedDataParallel``: each process runs its own module; nothing is copied. Each
  process's ``regularization_loss(collected)`` is its local token mean, and DDP's gradient
  averaging makes it the global one for equal shards, as for the cross-entropy.
- ``torch.compile``: the tap list exists before the first call, so the compiled graph always
  contains the hand-over (dynamo replays the append after the graph); a new collector each step
  does not recompile. Forward hooks registered per ``with`` block would not do: dynamo does not
  guard on module hooks (``torch._dynamo.config.skip_nnmodule_hook_guards``), so a hook added
  after the model's first compiled call is never run (measured with torch 2.14: a collector
  built on per-block hooks stayed empty from the second training step on).
- copies: ``copy.deepcopy`` or pickling a layer gives the copy an empty tap list, so a copy
  (an EMA model, a saved module) is not collected by the original's collectors.
"""
from __future__ import annotations

import threading
from typing import NamedTuple

import torch
from torch import nn

from ersm.layer import EnergyTerms, _Taps, energy_masks


class CollectedTerms(NamedTuple):
    """One layer's terms from one forward pass (of one replica, under DataParallel)."""

    layer: str  # the layer's qualified name in the model given to collect_terms
    terms: EnergyTerms


class TermsCollector:
    """The energy terms of every forward pass of a model's EnergyMask layers while it is open.

    Made by :func:`collect_terms`; use it as a context manager, once. ``layers`` names the
    EnergyMask modules it covers, in definition order. ``records`` lists what they handed over,
    ordered by forward pass, then device index (DataParallel's batch order), then layer.
    ``ersm.regularization_loss(collector)`` is the regulariser over all of it.
    """

    def __init__(self, model: nn.Module) -> None:
        self._layers = energy_masks(model)
        self.layers: tuple[str, ...] = tuple(name for name, _ in self._layers)
        parameter = next(model.parameters(), None)
        self.device = parameter.device if parameter is not None else torch.device("cpu")
        self._lock = threading.Lock()
        self._raw: list[tuple[str, EnergyTerms]] = []  # in arrival order
        self._state = "new"

    def __enter__(self) -> TermsCollector:
        if self._state != "new":
            raise RuntimeError("a TermsCollector can be entered only once; call collect_terms(model) again")
        self._state = "open"
        for name, layer in self._layers:
            if getattr(layer, "_taps", None) is None:  # a layer unpickled from before the taps existed
                layer._taps = _Taps()
            layer._taps.entries.append((self, name))
        return self

    def __exit__(self, *exc_info) -> None:
        for _, layer in self._layers:
            layer._taps.entries[:] = [entry for entry in layer._taps.entries if entry[0] is not self]
        self._state = "closed"

    def _record(self, name: str, terms: EnergyTerms) -> None:
        """Called by EnergyMask.forward, possibly from several DataParallel threads at once."""
        if torch.compiler.is_compiling():  # dynamo replays the append after the graph, in this thread
            self._raw.append((name, terms))
        else:
            with self._lock:
                self._raw.append((name, terms))

    @property
    def records(self) -> list[CollectedTerms]:
        """What the layers handed over, ordered by (forward pass, device index, layer).

        The k-th record of a layer on a device belongs to the k-th forward pass; within one
        device, records keep their arrival order. Replicas on several devices run in threads
        that finish in any order, so arrival order alone is not reproducible.
        """
        with self._lock:
            raw = list(self._raw)
        position = {name: index for index, name in enumerate(self.layers)}
        seen: dict[tuple[str, torch.device], int] = {}
        keyed = []
        for arrival, (name, terms) in enumerate(raw):
            device = terms.energy.device
            call = seen.get((name, device), 0)
            seen[(name, device)] = call + 1
            keyed.append(((call, device.type, -1 if device.index is None else device.index, position[name], arrival), name, terms))
        keyed.sort(key=lambda item: item[0])
        return [CollectedTerms(name, terms) for _, name, terms in keyed]

    def of(self, layer: str | None = None) -> list[EnergyTerms]:
        """The terms of one layer (default: the model's only EnergyMask), in record order."""
        return [record.terms for record in self.records if record.layer == self._name(layer)]

    def concatenated(self, layer: str | None = None) -> EnergyTerms:
        """One layer's terms joined along the batch dimension, on the device of the first record.

        Under DataParallel (and for micro-batches taken in order) that is the full batch's terms
        in batch order. A single record is returned as it is (no copy). Raises ``RuntimeError``
        when the layer handed over nothing.
        """
        name = self._name(layer)
        parts = self.of(name)
        if not parts:
            raise RuntimeError(f"EnergyMask {name!r} ran no forward pass inside collect_terms(...)")
        if len(parts) == 1:
            return parts[0]
        device = parts[0].energy.device
        return EnergyTerms(*(torch.cat([getattr(part, field).to(device) for part in parts]) for field in EnergyTerms._fields))

    def _name(self, layer: str | None) -> str:
        if layer is None:
            if len(self.layers) != 1:
                raise ValueError(f"the model has {len(self.layers)} EnergyMask layers {list(self.layers)}; name one")
            return self.layers[0]
        if layer not in self.layers:
            raise ValueError(f"layer={layer!r} is not an EnergyMask of the model; its EnergyMask layers are {list(self.layers)}")
        return layer

    def __len__(self) -> int:
        return len(self._raw)

    def __repr__(self) -> str:
        return f"TermsCollector(layers={list(self.layers)}, records={len(self)}, {self._state})"


def collect_terms(model: nn.Module) -> TermsCollector:
    """``with collect_terms(model) as collected: ...`` collects the terms of every forward pass.

    ``model`` may be the bare model or wrapped (``DataParallel``, ``DistributedDataParallel``,
    ``torch.compile``'s module): every EnergyMask reachable through ``model.named_modules()``
    is covered, under its qualified name there. See the module docstring for how and why.
    """
    return TermsCollector(model)
