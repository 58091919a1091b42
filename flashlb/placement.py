"""The placement data model shared with vLLM, SGLang and DeepSeek's EPLB.

- ``phy2log [L, P]``: the logical expert held by each physical slot.
- ``log2phy [L, N, R]``: the physical slots of each logical expert, ascending, -1 padded.
- ``logcnt [L, N]``: replicas per logical expert.
- device view ``[L, D, P // D]``: physical slot ``p`` lives on device ``p // (P // D)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ._checks import check_int, check_memory, check_tensor
from ._files import atomic_write, read_data, torch_bytes

__all__ = ["Placement", "log2phy_from_phy2log", "atomic_write"]


def _counts(phy2log: torch.Tensor, num_experts: int) -> torch.Tensor:
    """phy2log: [L, P] -> logcnt [L, N]."""
    cnt = torch.zeros(phy2log.shape[0], num_experts, dtype=torch.int64, device=phy2log.device)
    return cnt.scatter_add_(1, phy2log, torch.ones_like(phy2log))


def log2phy_from_phy2log(phy2log: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """phy2log: [L, P] (ids in [0, N)) -> (log2phy [L, N, R] -1 padded, logcnt [L, N]).

    Slots of one expert are listed in ascending physical order; R = max replica count (>= 1).
    """
    L, P = phy2log.shape
    logcnt = _counts(phy2log, num_experts)
    R = max(int(logcnt.max()) if logcnt.numel() else 1, 1)
    # A stable sort groups each expert's slots in ascending order; the rank of a slot inside
    # its group is its position minus the group's start.
    experts, slots = torch.sort(phy2log, dim=1, stable=True)
    starts = torch.cumsum(logcnt, dim=1) - logcnt
    rank = torch.arange(P, device=phy2log.device).expand(L, P) - starts.gather(1, experts)
    log2phy = torch.full((L, num_experts, R), -1, dtype=torch.int64, device=phy2log.device)
    flat = log2phy.view(L, -1)
    flat.scatter_(1, experts * R + rank, slots)
    return log2phy, logcnt


@dataclass(frozen=True)
class Placement:
    """Where every replica of every expert sits, for L layers.

    phy2log: [L, P] int64; log2phy: [L, N, R] int64 (-1 padded); logcnt: [L, N] int64;
    num_devices: D, with P % D == 0.  Build one with :meth:`from_phy2log` or
    :meth:`from_device_view`; the constructor trusts its arguments, :meth:`validate` does not.
    """

    phy2log: torch.Tensor
    log2phy: torch.Tensor
    logcnt: torch.Tensor
    num_devices: int

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_phy2log(cls, phy2log: torch.Tensor, num_experts: int, num_devices: int) -> "Placement":
        """phy2log: [L, P] or [P] integer ids in [0, N)."""
        check_tensor(phy2log, "phy2log")
        if phy2log.dim() == 1:
            phy2log = phy2log.unsqueeze(0)
        if phy2log.dim() != 2:
            raise ValueError(f"phy2log must be [L, P], got shape {tuple(phy2log.shape)}")
        if phy2log.dtype.is_floating_point or phy2log.dtype == torch.bool or phy2log.is_complex():
            raise ValueError(f"phy2log must hold integer expert ids, got dtype {phy2log.dtype}")
        N = check_int(num_experts, "num_experts")
        D = check_int(num_devices, "num_devices")
        # log2phy is [L, N, R] with R <= P: bound it before building it.
        check_memory(8 * phy2log.shape[0] * (phy2log.shape[1] + N * min(D, phy2log.shape[1])),
                     f"a placement of {tuple(phy2log.shape)} slots for {N} experts")
        phy2log = phy2log.to(torch.int64)
        if phy2log.numel() and (int(phy2log.min()) < 0 or int(phy2log.max()) >= N):
            raise ValueError(f"phy2log holds an id outside [0, {N}) (an empty or unknown slot)")
        if phy2log.shape[1] % D != 0:
            raise ValueError(f"phy2log has {phy2log.shape[1]} slots, not a multiple of num_devices={D}")
        log2phy, logcnt = log2phy_from_phy2log(phy2log, N)
        return cls(phy2log.contiguous(), log2phy, logcnt, D)

    @classmethod
    def from_device_view(cls, table: torch.Tensor, num_experts: int) -> "Placement":
        """table: [L, D, S] expert ids per device slot (vllm-ascend's expert table)."""
        if not isinstance(table, torch.Tensor) or table.dim() != 3:
            raise ValueError("table must be a [L, D, S] tensor")
        L, D, S = table.shape
        return cls.from_phy2log(table.reshape(L, D * S), num_experts, D)

    # ------------------------------------------------------------------ views
    @property
    def num_layers(self) -> int:
        return self.phy2log.shape[0]

    @property
    def num_physical(self) -> int:
        return self.phy2log.shape[1]

    @property
    def num_experts(self) -> int:
        return self.logcnt.shape[1]

    @property
    def slots_per_device(self) -> int:
        return self.num_physical // self.num_devices

    def device_view(self) -> torch.Tensor:
        """[L, D, P // D]: the experts on each device."""
        return self.phy2log.view(self.num_layers, self.num_devices, self.slots_per_device)

    def as_tuple(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(phy2log, log2phy, logcnt), the return value of ``rebalance_experts``."""
        return self.phy2log, self.log2phy, self.logcnt

    def to(self, device) -> "Placement":
        return Placement(self.phy2log.to(device), self.log2phy.to(device), self.logcnt.to(device),
                         self.num_devices)

    def select_layers(self, layers) -> "Placement":
        """The placement of some layers only (``layers``: indices or a bool mask)."""
        return Placement.from_phy2log(self.phy2log[layers], self.num_experts, self.num_devices)

    def replace_layers(self, layers: torch.Tensor, other: "Placement") -> "Placement":
        """A copy with ``self``'s layers ``layers`` (int [K]) replaced by ``other``'s K layers."""
        phy = self.phy2log.clone()
        phy[layers] = other.phy2log.to(phy.device)
        return Placement.from_phy2log(phy, self.num_experts, self.num_devices)

    def has_duplicates(self) -> torch.Tensor:
        """[L] bool: some device holds one expert twice."""
        dv = self.device_view().sort(dim=-1).values
        return (dv[..., 1:] == dv[..., :-1]).flatten(1).any(1)

    def __eq__(self, other) -> bool:
        return (isinstance(other, Placement) and self.num_devices == other.num_devices
                and self.phy2log.shape == other.phy2log.shape
                and bool(torch.equal(self.phy2log.cpu(), other.phy2log.cpu()))
                and self.num_experts == other.num_experts)

    __hash__ = None

    # ------------------------------------------------------------------ checks
    def validate(self, *, allow_duplicates: bool = False) -> "Placement":
        """Check every invariant; raise ValueError naming the first broken one; return self."""
        phy, l2p, cnt, D = self.phy2log, self.log2phy, self.logcnt, self.num_devices
        for name, t, rank in (("phy2log", phy, 2), ("log2phy", l2p, 3), ("logcnt", cnt, 2)):
            if not isinstance(t, torch.Tensor) or t.dim() != rank:
                raise ValueError(f"{name} must be a rank-{rank} tensor")
            check_tensor(t, name)
            if t.dtype.is_floating_point or t.dtype == torch.bool:
                raise ValueError(f"{name} must be an integer tensor, got {t.dtype}")
        L, P = phy.shape
        N = cnt.shape[1]
        if not isinstance(D, int) or isinstance(D, bool) or D < 1:
            raise ValueError(f"num_devices must be a positive int, got {D!r}")
        if cnt.shape[0] != L or l2p.shape[0] != L or l2p.shape[1] != N:
            raise ValueError(
                f"layer/expert sizes disagree: phy2log {tuple(phy.shape)}, "
                f"log2phy {tuple(l2p.shape)}, logcnt {tuple(cnt.shape)}")
        if P % D != 0:
            raise ValueError(f"every device must have the same slots: P={P} is not a multiple of D={D}")
        if P and (int(phy.min()) < 0 or int(phy.max()) >= N):
            raise ValueError(f"phy2log holds an id outside [0, {N}) (an empty slot or unknown expert)")
        real = _counts(phy.to(torch.int64), N)
        if bool((real == 0).any()):
            l, e = (real == 0).nonzero()[0].tolist()
            raise ValueError(f"expert {e} of layer {l} has no replica")
        if not torch.equal(real, cnt.to(torch.int64)):
            l, e = (real != cnt).nonzero()[0].tolist()
            raise ValueError(f"logcnt disagrees with phy2log at layer {l}, expert {e}")
        want, _ = log2phy_from_phy2log(phy.to(torch.int64), N)
        R = l2p.shape[2]
        if R < want.shape[2]:
            raise ValueError(f"log2phy is {R} wide, but some expert has {want.shape[2]} replicas")
        # Each row lists the expert's slots (any order) first, then -1 padding.
        padded = torch.arange(R, device=cnt.device) >= cnt.to(torch.int64).unsqueeze(-1)
        if bool(((l2p == -1) != padded).any()):
            l, e = ((l2p == -1) != padded).any(-1).nonzero()[0].tolist()
            raise ValueError(f"log2phy of layer {l}, expert {e} is not its slots followed by -1 padding")
        got = l2p.to(torch.int64).sort(-1, descending=True).values[..., : want.shape[2]]
        if not torch.equal(got, want.sort(-1, descending=True).values):
            l, e = (got != want.sort(-1, descending=True).values).any(-1).nonzero()[0].tolist()
            raise ValueError(f"log2phy disagrees with phy2log at layer {l}, expert {e}")
        if not allow_duplicates:
            dup = self.has_duplicates()
            if bool(dup.any()):
                l = int(dup.nonzero()[0])
                dv = self.device_view()[l]
                for d in range(D):
                    vals, c = dv[d].unique(return_counts=True)
                    if bool((c > 1).any()):
                        e = int(vals[c > 1][0])
                        raise ValueError(f"device {d} of layer {l} holds expert {e} twice")
        return self

    # ------------------------------------------------------------------ files
    def save(self, path) -> None:
        """Write ``.json`` or ``.pt`` (both SGLang's ``--init-expert-location`` forms) or
        ``.safetensors``, atomically.

        ``.json`` and ``.pt`` hold only ``physical_to_logical_map`` (SGLang passes every key to
        its constructor), so loading them back needs ``num_devices``. ``.safetensors`` (which
        SGLang does not read) also holds ``num_devices`` and ``num_experts``.
        """
        path = Path(path)
        suffix = path.suffix.lower()
        phy = self.phy2log.cpu().contiguous()
        if suffix == ".json":
            atomic_write(path, json.dumps({"physical_to_logical_map": phy.tolist()}).encode())
        elif suffix == ".pt":
            atomic_write(path, torch_bytes({"physical_to_logical_map": phy}))
        elif suffix == ".safetensors":
            from safetensors.torch import save

            tensors = {"physical_to_logical_map": phy, "num_devices": torch.tensor(self.num_devices),
                       "num_experts": torch.tensor(self.num_experts)}
            atomic_write(path, save(tensors))
        else:
            raise ValueError(f"path must end in .json, .pt or .safetensors, got {path.name!r}")

    @classmethod
    def load(cls, path, num_devices: int | None = None, num_experts: int | None = None) -> "Placement":
        """Read a placement written by :meth:`save` (or any ``physical_to_logical_map`` file).

        ``.pt`` files are read with ``weights_only=True``: no Python object is ever unpickled.
        Only a regular file of sane size is opened; a missing, special or damaged file, or a
        placement that breaks an invariant (an expert without a replica, ids that are not
        integers in [0, N)), is a ``ValueError``. Two replicas of one expert on one device
        are allowed here (the default greedy places them); :meth:`validate` can refuse them.
        """
        path = Path(path)
        data = read_data(path, (".json", ".pt", ".safetensors"))
        if path.suffix.lower() == ".json":
            if not isinstance(data, dict) or "physical_to_logical_map" not in data:
                raise ValueError(f"{path}: no 'physical_to_logical_map' in the JSON object")
            phy = _json_ids(data["physical_to_logical_map"], path)
        else:
            if not isinstance(data, dict) or not isinstance(data.get("physical_to_logical_map"), torch.Tensor):
                raise ValueError(f"{path}: no 'physical_to_logical_map' tensor in the file")
            phy = check_tensor(data["physical_to_logical_map"], f"{path}: physical_to_logical_map")
            for key in ("num_devices", "num_experts"):
                if key in data and (not isinstance(data[key], torch.Tensor) or data[key].numel() != 1):
                    raise ValueError(f"{path}: {key} must be a one-element integer tensor")
            if num_devices is None and "num_devices" in data:
                num_devices = check_int(data["num_devices"], f"{path}: num_devices")
            if num_experts is None and "num_experts" in data:
                num_experts = check_int(data["num_experts"], f"{path}: num_experts")
        if num_devices is None:
            raise ValueError(f"{path}: num_devices is not stored in this file; pass num_devices=")
        if phy.dtype.is_floating_point or phy.dtype == torch.bool or phy.is_complex():
            raise ValueError(f"{path}: expert ids must be integers, got dtype {phy.dtype}")
        if num_experts is None:
            # Every expert has a replica in a valid placement, so the largest id tells N.
            if phy.numel() == 0:
                raise ValueError(f"{path}: the placement is empty")
            num_experts = int(phy.max()) + 1
        try:
            placement = cls.from_phy2log(phy, num_experts, num_devices)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        try:
            return placement.validate(allow_duplicates=True)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None


def _json_ids(rows, path) -> torch.Tensor:
    """A JSON ``[L][P]`` (or ``[P]``) of integer ids as int64; floats, booleans, strings and
    ragged or deeper nesting are refused (JSON would let 1.7 or true pass for an id)."""
    if isinstance(rows, list) and rows and all(isinstance(r, list) for r in rows):
        flat = [x for r in rows for x in r]
        if len({len(r) for r in rows}) != 1:
            raise ValueError(f"{path}: physical_to_logical_map rows differ in length")
    elif isinstance(rows, list):
        flat = rows
    else:
        raise ValueError(f"{path}: physical_to_logical_map must be a list of lists of expert ids")
    if not flat:
        raise ValueError(f"{path}: physical_to_logical_map is empty")
    for x in flat:
        if type(x) is not int:
            raise ValueError(f"{path}: physical_to_logical_map holds {x!r}, not an integer expert id")
        if not -1 <= x < 2**62:
            raise ValueError(f"{path}: physical_to_logical_map holds the id {x}, outside [0, 2**62)")
    return torch.tensor(rows, dtype=torch.int64)
