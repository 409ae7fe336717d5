"""The accumulator base: state declared once, and reset, merge, device moves and state dicts
derived from the declaration (the ``add_state`` idea of torchmetrics' ``Metric``).

An accumulator declares each piece of its state in ``__init__`` with :meth:`Accumulator.add_state`:
a plain number (``n``, a running float sum) or a tensor that the first batch creates (its shape
is known only then; until then the state is None). Every accumulator then has

* ``reset()``: every state back to its declared default;
* ``merge(other)``: combine two partial states of the same stream's shards; the default adds
  every state declared with ``reduce="sum"``, and :class:`ShiftedSums` first re-expresses the
  other state's sums about this one's shifts. ``merge_problem(other)`` says beforehand why a
  state cannot be merged (another type, width or test matrix), so a refused merge changes
  nothing;
* ``to(device)``: every tensor state moved;
* ``state_dict()`` / ``load_state_dict(sd)``: a flat ``{name: Tensor}`` with plain numbers as
  0-d tensors, so that it saves with ``torch.save`` or safetensors and sums across processes;
* ``align_(collective)``: before a data-parallel sum (:meth:`nrc_cli.distributed.Group.reduce`),
  bring every process's state to a common form (the same shifts, the same shape), after which
  adding every state declared ``reduce="sum"`` over the processes is exactly a merge. Plain
  sums need nothing; :class:`ShiftedSums` agrees on one shift.

How a state combines is declared here, on the accumulator, and nowhere else: the checks of a
monitor's merge, join and data-parallel sum (:mod:`nrc_cli.passes.combining`) and its state
dicts read only this interface, never an accumulator's class. Besides ``add_state``'s
``reduce``, ``merge_problem``, ``merge`` and ``align_``:

* ``omega``: the test matrix Ω (p×s) a sketch is built with, a constant and not state (None
  for every other accumulator). States combine only when built with the same Ω: a merge
  refuses another one (:meth:`Accumulator.matrix_problem`), the processes of a sum compare
  its checksum first (:meth:`Accumulator.align_`), and a monitor's state dict keeps it beside
  the state (``omega/<layer>``); ``to(device)`` moves it and it fixes the state's p and s;
* ``width``: p, the width of the features summed (merges and sums need the same);
* ``targets_record()``: what the state records of the targets it was fed, the same (but for
  round-off) in any state fed the same samples: a join of passes over the same samples
  compares it to refuse other data (None: the state records nothing of the targets).

Kernels raise ``ValueError`` (bad shapes, empty state); the boundaries above them turn what a user
can cause into :class:`nrc_cli.errors.NrcError`.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from typing import Any, Protocol

import torch

_F64 = torch.float64


class Collective(Protocol):
    """What :meth:`Accumulator.align_` asks of a process group
    (:class:`nrc_cli.distributed.Group` is one). Both are collectives: every process calls
    them, in the same order."""

    rank: int  # this process's place, 0..world_size − 1
    world_size: int  # the number of processes

    def agree(self, value: int, op: str = "max") -> int:
        """``value`` combined over the processes (``max``, ``min`` or ``sum``)."""
        ...

    def sum_(self, tensor: torch.Tensor) -> None:
        """Replace ``tensor`` (contiguous) by its sum over the processes, in place."""
        ...


class Accumulator:
    """Streaming state with declared members (see the module docstring).

    Subclasses call ``super().__init__()`` first, then :meth:`add_state` for each member, and
    implement ``update`` and ``compute``. ``n`` (the number of samples folded in) must be one of
    the states: an empty accumulator (``n == 0``) merges as the identity.
    """

    n: int
    # Set by the subclasses that place their state on a fixed device (None: the batch's).
    device: torch.device | None
    # A sketch's test matrix Ω (p×s): a constant the state is built with, not state; two
    # states combine only when built with the same one (see the module docstring).
    omega: torch.Tensor | None = None

    def __init__(self) -> None:
        self._defaults: dict[str, Any] = {}
        self._reduce: dict[str, str | None] = {}
        self._shapes: dict[str, tuple[str, ...]] = {}
        self._dtypes: dict[str, torch.dtype] = {}

    # Each subclass takes the tensors it needs: (*args: Any, **kwargs: Any) lets it narrow them.
    def update(self, *args: Any, **kwargs: Any) -> None:
        """Fold one batch in (subclasses)."""
        raise NotImplementedError

    def compute(self) -> Any:
        """The statistic so far; pure (subclasses)."""
        raise NotImplementedError

    def align_(self, collective: Collective) -> None:
        """Before a data-parallel sum: bring this process's state, not empty, to the common
        form in which adding every summed state over the processes is exactly a merge. Every
        process calls it (a collective); plain sums need nothing, which is the default, once
        the processes have checked that they sketch with the same test matrix Ω (a checksum of
        its shape and bytes; a state without one checks nothing): sums of Σ·Ω over different
        Ω would be no sketch at all. Subclasses call it first."""
        if self.omega is not None and not same_everywhere(collective, checksum(self.omega)):
            raise ValueError(
                "the processes sketch a layer with different test matrices (seed or sketch size)"
            )

    def targets_record(self) -> torch.Tensor | None:
        """What this state records of the targets it was fed, on the CPU: the same, but for
        round-off, in every state fed the same samples (a join compares it); None when it
        records nothing of them (the default), or holds no sample."""
        return None

    def add_state(
        self,
        name: str,
        default: int | float | None,
        *,
        reduce: str | None = "sum",
        shape: tuple[str, ...] = (),
        dtype: torch.dtype = _F64,
    ):
        """Declare a state: a plain number, or a tensor created by the first update (None).

        ``reduce="sum"``: merging adds the two states; ``None``: the state is not summed
        (a shift, which :class:`ShiftedSums` handles itself). A tensor state declares its
        ``shape`` in named dimensions (``("p", "p")``: p, the feature width, see
        :meth:`state_problem`) and its ``dtype``.
        """
        if reduce not in ("sum", None):
            raise ValueError(f"reduce must be 'sum' or None, got {reduce!r}")
        self._defaults[name] = default
        self._reduce[name] = reduce
        self._shapes[name] = shape
        self._dtypes[name] = dtype
        setattr(self, name, default)

    @property
    def width(self) -> int | None:
        """p, the width of the features summed, once a batch has been seen (None before, and
        for a state that sums no features)."""
        return None

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(self._defaults)

    @property
    def summed_states(self) -> tuple[str, ...]:
        """The states a merge adds (``reduce="sum"``), in declaration order."""
        return tuple(name for name, how in self._reduce.items() if how == "sum")

    def reset(self) -> None:
        """Every state back to its declared default (tensors to None)."""
        for name, default in self._defaults.items():
            setattr(self, name, default)

    def to(self, device: torch.device | str) -> Accumulator:
        """Move every tensor state, and the test matrix, to ``device`` (in place); return
        self."""
        for name in self._defaults:
            value = getattr(self, name)
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))
        if self.omega is not None:
            self.omega = self.omega.to(device)
        if hasattr(self, "device") and getattr(self, "device", None) is not None:
            self.device = torch.device(device)
        return self

    # -- merging ---------------------------------------------------------------------------

    def merge(self, other: Accumulator) -> Accumulator:
        """Fold ``other`` (a partial state of another shard) into this one, in place.

        Raises ``TypeError`` for another type of accumulator and ``ValueError`` for a state
        that cannot be merged (:meth:`merge_problem`); either way before anything changes.
        """
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        problem = self.merge_problem(other)
        if problem is not None:
            raise ValueError(problem)
        if other.n == 0:
            return self
        if self.n == 0:
            self._copy_from(other)
            return self
        self._merge_nonempty(other)
        return self

    def merge_problem(self, other: Accumulator) -> str | None:
        """Why ``other`` cannot be merged into this state, or None when it can. Pure: a caller
        merging several states checks them all first, so that a refused merge changes none.

        The default: another type, another test matrix (:meth:`matrix_problem`), or a summed
        tensor state of another shape (both states holding samples).
        """
        if type(other) is not type(self):
            return f"cannot merge {type(other).__name__} into {type(self).__name__}"
        problem = self.matrix_problem(other)
        if problem is not None:
            return problem
        if other.n == 0 or self.n == 0:
            return None
        for name in self.summed_states:
            mine, theirs = getattr(self, name), getattr(other, name)
            tensors = isinstance(mine, torch.Tensor) and isinstance(theirs, torch.Tensor)
            if tensors and mine.shape != theirs.shape:
                return _shape_message(name, mine, theirs)
        return None

    def matrix_problem(self, other: Accumulator) -> str | None:
        """Why ``other``, holding samples, cannot be merged for its test matrix (another Ω:
        its sums would be read against this state's Ω, also when this one is empty), or None.
        The default ``merge_problem`` asks it; a subclass that checks more first asks it first.
        """
        if self.omega is None or other.omega is None or not other.n:
            return None
        a, b = self.omega, other.omega
        if a.shape == b.shape and torch.equal(b.to(a.device), a):
            return None
        return "cannot merge sketches built with different test matrices"

    def _copy_from(self, other: Accumulator) -> None:
        for name in self._defaults:
            value = getattr(other, name)
            if isinstance(value, torch.Tensor):
                device = self._device_or(value.device)
                value = value.to(device).clone()
            setattr(self, name, value)

    def _device_or(self, fallback: torch.device) -> torch.device:
        device = getattr(self, "device", None)
        return device if device is not None else fallback

    def _merge_nonempty(self, other: Accumulator) -> None:
        """Both states hold samples: add every summed state."""
        for name, reduce in self._reduce.items():
            if reduce != "sum":
                continue
            mine, theirs = getattr(self, name), getattr(other, name)
            if isinstance(mine, torch.Tensor):
                _check_same_shape(name, mine, theirs)
                mine.add_(theirs.to(mine.device))
            else:
                setattr(self, name, mine + theirs)

    # -- state dicts -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every state that is set, as tensors (plain numbers as 0-d int64/float64 tensors)."""
        out: dict[str, torch.Tensor] = {}
        for name, default in self._defaults.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, torch.Tensor):
                out[name] = value.detach().clone()
            elif isinstance(default, float):
                out[name] = torch.tensor(float(value), dtype=_F64)
            else:
                out[name] = torch.tensor(int(value), dtype=torch.int64)
        return out

    def known_dims(self) -> dict[str, int]:
        """Dimensions this accumulator fixes itself: a sketch's p and s, from its Ω."""
        if self.omega is None:
            return {}
        return {"p": int(self.omega.shape[0]), "s": int(self.omega.shape[1])}

    def state_problem(
        self, state: Mapping[str, Any], dims: Mapping[str, int] | None = None, prefix: str = ""
    ) -> str | None:
        """Why ``state`` is not a state this accumulator could have written, or None. Pure.

        Checked whole: no unknown entry; every plain number there, a finite number (counts
        whole and >= 0); once ``n`` > 0 every tensor there, of its declared dtype and shape
        (each named dimension the same wherever it occurs, and equal to ``dims`` where given:
        ``p`` the feature width, ``t`` the target width), with finite values; then what the
        subclass checks of the numbers themselves (:meth:`_consistency`). Messages name the
        entry as ``prefix`` + its name.
        """
        unknown = sorted(set(state) - set(self._defaults))
        if unknown:
            return (
                f"unknown state(s) {', '.join(repr(prefix + k) for k in unknown)}; expected "
                f"some of {', '.join(self._defaults)}"
            )
        sizes = {**(dims or {}), **self.known_dims()}
        n = 0
        for name, default in self._defaults.items():
            key = repr(prefix + name)
            if default is not None:
                if name not in state:
                    return f"entry {key} is missing"
                problem = _number_problem(state[name], isinstance(default, float))
                if problem:
                    return f"entry {key}: {problem}"
                if name == "n":
                    n = int(state[name])
                continue
            if name not in state:
                if n > 0:
                    return f"entry {key} is missing (the state holds {n} samples)"
                continue
            value = state[name]
            if not isinstance(value, torch.Tensor):
                return f"entry {key}: expected a tensor, found {type(value).__name__}"
            want = self._dtypes[name]
            if value.dtype != want:
                return f"entry {key}: expected dtype {_dtype(want)}, found {_dtype(value.dtype)}"
            shape = self._shapes[name]
            if value.ndim != len(shape):
                return (
                    f"entry {key}: expected {len(shape)} dimension(s) "
                    f"({', '.join(shape)}), found shape {tuple(value.shape)}"
                )
            for dim, size in zip(shape, value.shape, strict=True):
                sizes.setdefault(dim, int(size))  # a dimension is what it first was
            expected = tuple(sizes[d] for d in shape)
            if expected != tuple(value.shape):
                return f"entry {key}: expected shape {expected}, found {tuple(value.shape)}"
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                return f"entry {key}: non-finite values (nan or inf)"
        problem = self._consistency(state)
        return None if problem is None else f"{prefix.rstrip('/')}: {problem}"

    def _consistency(self, state: Mapping[str, Any]) -> str | None:
        """What a subclass checks of a well-formed state's numbers (counts that add up)."""
        return None

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Replace this state by one from :meth:`state_dict` (missing tensors stay None)."""
        unknown = set(state) - set(self._defaults)
        if unknown:
            raise ValueError(
                f"{type(self).__name__}: unknown state(s) {', '.join(sorted(unknown))}; "
                f"expected some of {', '.join(self._defaults)}"
            )
        self.reset()
        for name, default in self._defaults.items():
            if name not in state:
                continue
            value = state[name]
            if default is None:
                value = torch.as_tensor(value).to(self._device_or(torch.as_tensor(value).device))
                setattr(self, name, value.clone())
            elif isinstance(default, float):
                setattr(self, name, float(value))
            else:
                setattr(self, name, int(value))


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _number_problem(value: Any, floating: bool) -> str | None:
    """Why ``value`` (a plain number or a 0-d tensor) is not a finite float (``floating``) or a
    whole number >= 0, or None."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.ndim > 1:
            return f"expected a number, found a tensor of shape {tuple(value.shape)}"
        if value.is_complex():
            return f"expected a real number, found dtype {_dtype(value.dtype)}"
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"expected a number, found {type(value).__name__}"
    if not math.isfinite(value):
        return f"expected a finite number, found {value}"
    if not floating and (value != int(value) or value < 0):
        return f"expected a whole number >= 0, found {value}"
    return None


def _check_same_shape(name: str, mine: torch.Tensor, theirs: torch.Tensor) -> None:
    if mine.shape != theirs.shape:
        raise ValueError(_shape_message(name, mine, theirs))


def _shape_message(name: str, mine: torch.Tensor, theirs: torch.Tensor) -> str:
    return (
        f"cannot merge state '{name}' of shape {tuple(theirs.shape)} into one of shape "
        f"{tuple(mine.shape)} (feature or target width changed)"
    )


def checksum(*parts: torch.Tensor | int | str) -> int:
    """A CRC-32 of ``parts``: of a tensor's shape, dtype and bytes (read on the CPU), of a
    number's or a string's text. Equal parts give equal sums on every process; different ones,
    different sums but for a chance of 2⁻³²."""
    crc = 0
    for part in parts:
        if isinstance(part, torch.Tensor):
            t = part.detach().to("cpu").contiguous().reshape(-1)
            crc = zlib.crc32(f"{tuple(part.shape)} {t.dtype}".encode(), crc)
            crc = zlib.crc32(t.view(torch.uint8).numpy().tobytes(), crc)
        else:
            crc = zlib.crc32(repr(part).encode(), crc)
    return crc


def same_everywhere(collective: Collective, value: int) -> bool:
    """Whether every process holds the same ``value`` (two small all-reduces: a collective)."""
    return collective.agree(value, "min") == collective.agree(value, "max")


def shift_correction(
    sa: torch.Tensor, da: torch.Tensor, sb: torch.Tensor, db: torch.Tensor, n: int
) -> torch.Tensor:
    """What Σ(a − c_a)(b − c_b)ᵀ over n samples gains when its shifts move to c_a − da and
    c_b − db, given sa = Σ(a − c_a) and sb = Σ(b − c_b): sa dbᵀ + da sbᵀ + n da dbᵀ."""
    return torch.outer(sa, db) + torch.outer(da, sb) + n * torch.outer(da, db)


class ShiftedSums(Accumulator):
    """Sums of features z and targets y taken about fixed shifts (c_z, c_y).

    States: ``n``; the shifts ``cz`` (p,), ``cy`` (t,) (the first batch's means); ``sz`` =
    Σ(z − c_z), ``sy`` = Σ(y − c_y); and second-order sums declared by the subclass with
    :meth:`add_comoment`. Re-expressing the sums about other shifts is one small correction per
    state (:meth:`reshifted`), which is what makes two states mergeable by a plain sum: the
    merge re-expresses the other state about this one's shifts, then adds.

    For a data-parallel reduction without gathering states, every process can
    :meth:`reshift_` its sums about one common shift, after which summing every summed state
    across processes (``all_reduce(SUM)``) is exactly a merge; :meth:`align_` takes the
    global mean as that shift.
    """

    # Tensor states are None until the first batch (see add_state).
    cz: Any
    cy: Any
    sz: Any
    sy: Any
    omega: Any  # the sketch's test matrix, for form="sketch" co-moments (None for others)

    def __init__(self) -> None:
        super().__init__()
        self._comoments: dict[str, tuple[str, str, str]] = {}
        self.add_state("n", 0)
        self.add_state("cz", None, reduce=None, shape=("p",))
        self.add_state("cy", None, reduce=None, shape=("t",))
        self.add_state("sz", None, shape=("p",))
        self.add_state("sy", None, shape=("t",))

    def add_comoment(self, name: str, left: str, right: str, *, form: str = "full") -> None:
        """Declare a second-order sum Σ(a − c_a)(b − c_b)ᵀ with a, b each ``"z"`` or ``"y"``.

        ``form``: ``"full"`` (the outer-product sum), ``"diagonal"`` (its diagonal only, for
        a = b), or ``"sketch"`` (the full sum times the test matrix ``self.omega``, for
        a = b = z).
        """
        dim = {"z": "p", "y": "t"}
        shape = {"full": (dim[left], dim[right]), "diagonal": (dim[left],), "sketch": ("p", "s")}
        self.add_state(name, None, shape=shape[form])
        self._comoments[name] = (left, right, form)

    @property
    def width(self) -> int | None:
        return None if self.cz is None else int(self.cz.shape[0])

    def reshifted(self, cz: torch.Tensor, cy: torch.Tensor) -> dict[str, torch.Tensor]:
        """This state's sums re-expressed about the shifts (cz, cy); the state is unchanged."""
        d = self.cz - cz.to(self.cz.device)
        e = self.cy - cy.to(self.cy.device)
        n = self.n
        first = {"z": self.sz, "y": self.sy}
        delta = {"z": d, "y": e}
        out = {"sz": self.sz + n * d, "sy": self.sy + n * e}
        for name, (a, b, form) in self._comoments.items():
            sa, da, sb, db = first[a], delta[a], first[b], delta[b]
            if form == "diagonal":
                corr = 2 * da * sb + n * da * db
            elif form == "sketch":
                omega = self.omega
                corr = (
                    torch.outer(sa, db @ omega)
                    + torch.outer(da, sb @ omega)
                    + n * torch.outer(da, db @ omega)
                )
            else:
                corr = shift_correction(sa, da, sb, db, n)
            out[name] = getattr(self, name) + corr
        return out

    def reshift_(self, cz: torch.Tensor, cy: torch.Tensor) -> None:
        """Re-express the sums about (cz, cy) in place (the shifts become cz, cy)."""
        if self.n == 0:
            return
        for name, value in self.reshifted(cz, cy).items():
            setattr(self, name, value)
        self.cz = cz.to(device=self.cz.device, dtype=_F64).clone()
        self.cy = cy.to(device=self.cy.device, dtype=_F64).clone()

    def align_(self, collective: Collective) -> None:
        """Re-express the sums about the global means of z and y over the processes (one sum
        of p + t + 1 numbers), the shift every process then shares; once the processes have
        checked that their test matrices (if any), feature and target widths agree."""
        super().align_(collective)
        p, t = self.cz.shape[0], self.cy.shape[0]
        if not same_everywhere(collective, checksum(p, t)):
            raise ValueError("the feature or target width of a layer differs between the processes")
        # Σz and Σy of this process (n·c + Σ(z − c)); with N, the global means.
        sums = torch.cat(
            [
                torch.tensor([float(self.n)], dtype=_F64, device=self.cz.device),
                self.n * self.cz + self.sz,
                self.n * self.cy + self.sy,
            ]
        )
        collective.sum_(sums)
        n = float(sums[0])
        self.reshift_(sums[1 : 1 + p] / n, sums[1 + p : 1 + p + t] / n)

    def offsets(self) -> tuple[int, torch.Tensor, torch.Tensor]:
        """(n, mean_z − c_z, mean_y − c_y): how far the means are from the shifts, from which
        the centred moments follow; ``ValueError`` for an empty state."""
        if self.n == 0:
            raise ValueError("no samples accumulated")
        return self.n, self.sz / self.n, self.sy / self.n

    def targets_record(self) -> torch.Tensor | None:
        """The mean of the targets and, for a state that sums Σ(y − c_y)(y − c_y)ᵀ, their
        covariance (flattened after the mean)."""
        if not self.n:
            return None
        _, _, dy = self.offsets()
        parts = [self.cy + dy]
        for name, comoment in self._comoments.items():
            if comoment == ("y", "y", "full"):
                cov = getattr(self, name) / self.n - torch.outer(dy, dy)
                parts.append(cov.reshape(-1))
        return torch.cat(parts).cpu()

    def merge_problem(self, other: Accumulator) -> str | None:
        """Another type, or other feature or target widths (both states holding samples)."""
        if not isinstance(other, ShiftedSums) or not (self.n and other.n):
            return super().merge_problem(other)
        if other.cz.shape != self.cz.shape or other.cy.shape != self.cy.shape:
            return (
                f"feature/target width changed: had ({self.cz.shape[0]}, {self.cy.shape[0]}), "
                f"got ({other.cz.shape[0]}, {other.cy.shape[0]})"
            )
        return super().merge_problem(other)

    def _merge_nonempty(self, other: Accumulator) -> None:
        assert isinstance(other, ShiftedSums)
        parts = other.reshifted(self.cz.to(other.cz.device), self.cy.to(other.cy.device))
        for name, value in parts.items():
            getattr(self, name).add_(value.to(getattr(self, name).device))
        self.n += other.n
