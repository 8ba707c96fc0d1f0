"""The energy of one inference, estimated from its arithmetic.

An SNN's promise is energy: a layer that reads binary spikes does one accumulate (AC) per
input spike and outgoing synapse, where a non-spiking network does a multiply-accumulate
(MAC) per synapse and time step. SNN papers compare the two with per-operation energies
of a process node (Horowitz, ISSCC 2014, at 45 nm), and so does this module:

    E = E_MAC × MACs + E_AC × SOPs

MACs are those of the layers that read non-spike input (the stem on analog images or
event counts, a classifier on averaged spikes), SOPs the synaptic operations of the layers
that read spikes, both per image and summed over the T time steps
(:class:`snn.diagnostics.ActivityMonitor` counts them). The reference is the same
architecture run as a non-spiking network for one step, E_ANN = E_MAC × its MACs.

The estimate counts arithmetic only: no memory traffic, no neuron updates, batch norm
folded into the weights. It ranks configurations of one architecture; it is not a
measurement of a chip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["DEFAULT_PRESET", "PRESETS", "Energy", "OpCosts", "energy_uj"]

_HOROWITZ = "Horowitz, 'Computing's energy problem', ISSCC 2014, 45 nm"


@dataclass(frozen=True)
class OpCosts:
    """Energy per operation: a multiply-accumulate and an accumulate, in picojoules."""

    mac_pj: float
    ac_pj: float
    source: str = "the spec's own numbers"


PRESETS: dict[str, OpCosts] = {
    # a MAC is a multiply and an add, an AC the add alone (Horowitz 2014, energy per operation)
    "45nm-fp32": OpCosts(3.7 + 0.9, 0.9, f"{_HOROWITZ}: fp32 multiply 3.7 pJ, add 0.9 pJ"),
    "45nm-fp16": OpCosts(1.1 + 0.4, 0.4, f"{_HOROWITZ}: fp16 multiply 1.1 pJ, add 0.4 pJ"),
    "45nm-int32": OpCosts(3.1 + 0.1, 0.1, f"{_HOROWITZ}: int32 multiply 3.1 pJ, add 0.1 pJ"),
    "45nm-int8": OpCosts(0.2 + 0.03, 0.03, f"{_HOROWITZ}: int8 multiply 0.2 pJ, add 0.03 pJ"),
}
"""Named per-operation energies with their sources; ``45nm-fp32`` (4.6 pJ per MAC, 0.9 pJ per
AC) is what SNN papers quote."""

DEFAULT_PRESET = "45nm-fp32"


class Energy(BaseModel):
    """How a trial's energy is estimated: a preset, or the user's own energies per operation;
    and, for a study, the most energy a configuration may spend (a constraint of the search,
    no effect on training).

    Give ``preset`` or both ``mac_pj`` and ``ac_pj``; nothing given is ``45nm-fp32``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str | None = Field(None, description=f"one of {', '.join(PRESETS)} (default {DEFAULT_PRESET})")
    mac_pj: float | None = Field(None, gt=0, description="your own energy per multiply-accumulate, pJ")
    ac_pj: float | None = Field(None, gt=0, description="your own energy per accumulate, pJ")
    max_uj: float | None = Field(None, gt=0, description="a study's energy budget per inference, µJ: "
                                                         "configurations above it are infeasible to the search")

    @model_validator(mode="before")
    @classmethod
    def _default_preset(cls, data: Any) -> Any:
        """Nothing given is the default preset, named (a trial's record says which energies it used)."""
        if isinstance(data, dict) and all(data.get(k) is None for k in ("preset", "mac_pj", "ac_pj")):
            return {**data, "preset": DEFAULT_PRESET}
        return data

    @model_validator(mode="after")
    def _one_source(self) -> "Energy":
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"preset: unknown preset {self.preset!r}; allowed: {', '.join(PRESETS)}")
        own = (self.mac_pj is not None, self.ac_pj is not None)
        if any(own) and self.preset is not None:
            raise ValueError(f"{'mac_pj' if own[0] else 'ac_pj'}: give a preset or your own mac_pj and ac_pj, "
                             f"not both")
        if any(own) and not all(own):
            raise ValueError(f"{'ac_pj' if own[0] else 'mac_pj'}: your own energies need both mac_pj and ac_pj")
        return self

    def costs(self) -> OpCosts:
        """The energies per operation this setting names."""
        if self.mac_pj is not None and self.ac_pj is not None:
            return OpCosts(self.mac_pj, self.ac_pj)
        return PRESETS[self.preset or DEFAULT_PRESET]

    @property
    def name(self) -> str:
        """The preset's name, or ``custom``."""
        return "custom" if self.mac_pj is not None else (self.preset or DEFAULT_PRESET)


def energy_uj(macs: float, sops: float, costs: OpCosts) -> float:
    """E = E_MAC × MACs + E_AC × SOPs, in µJ (operations per image, energies in pJ)."""
    return (costs.mac_pj * macs + costs.ac_pj * sops) * 1e-6
