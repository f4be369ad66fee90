"""Mask modules: one learnable gate per prunable unit (DESIGN 2.1 VIB, 2.2 hard-concrete).

Both classes answer the same questions, so the wiring into a model and the objective never ask which method
is in use: the gate for a batch of rows (stochastic in training, deterministic in evaluation), which units are
kept, a differentiable kept count, the information penalty, an importance score, and the value each kept unit
folds into the weights at compaction. Noise comes from a seed (counter-based, regenerated in backward), so the
same seed gives the same gates at every place a mask acts.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..ops import masks as mask_ops

LOG_ALPHA_MIN, LOG_ALPHA_MAX = math.log(1e-2), math.log(1e2)
# log sigma^2 of a VIB unit that a starting plan removes (VIBMask.start_from): the pruning default's noise level.
REMOVED_LOG_SIGMA2 = -1.0
# Where VIBMask.keep_top puts the boundary when every unit (or none) is to be kept: this far past the last one.
KEEP_TOP_MARGIN = 0.05


class UnitMask(nn.Module):
    """Base class: gates over ``units`` prunable units."""

    method = ""

    def __init__(self, units: int):
        super().__init__()
        if int(units) < 1:
            raise ValueError(f"{type(self).__name__}: units must be >= 1, got {units}")
        self.units = int(units)

    def gate_last_dim(self, x: torch.Tensor, seed: int, training: bool) -> torch.Tensor:
        """``x`` [..., units] times the gates (per row of x in training when the method samples per row)."""
        raise NotImplementedError

    def unit_gates(self, rows: int, seed: int, training: bool) -> torch.Tensor:
        """Gate values as [rows, units] (per-row methods) or [units] (one sample shared by all rows)."""
        raise NotImplementedError

    def fused_gate(self, seed: int, training: bool) -> dict:
        """Keyword arguments of a fused op (``ops.masked_linear``, ``masked_swiglu``, the masked norms) that
        make it apply these gates to its output columns, drawing any noise inside the kernel."""
        raise NotImplementedError

    def keep(self) -> torch.Tensor:
        """Bool [units]: the deterministic decision."""
        raise NotImplementedError

    def training_keep(self, seed: int) -> torch.Tensor:
        """Bool [units]: the units whose gate can be nonzero in this training step (norm statistics use them)."""
        return self.keep()

    def soft_count(self) -> torch.Tensor:
        """Differentiable expected number of kept units (0-d)."""
        raise NotImplementedError

    def kl(self) -> torch.Tensor:
        """Information penalty (0-d; zero for methods without one)."""
        return self.score().new_zeros(())

    def score(self) -> torch.Tensor:
        """Importance per unit, comparable across masks of the same method: higher means keep first."""
        raise NotImplementedError

    def scale(self) -> torch.Tensor:
        """Per-unit value a kept unit folds into the weights (detached)."""
        raise NotImplementedError

    def eval_gate(self) -> torch.Tensor:
        """The deterministic gate: ``scale`` on kept units, 0 elsewhere."""
        raise NotImplementedError

    def open_gate(self) -> torch.Tensor:
        """The deterministic gate every unit would have if it were kept (differentiable; [units])."""
        raise NotImplementedError

    def quench_gate(self) -> torch.Tensor:
        """The gate of a quenched training forward (``PruneConfig.quench_gradient="straight_through"``): the value
        of :meth:`eval_gate`, the gradient of :meth:`open_gate` for every unit. A removed unit's gate is 0 in
        the forward yet learns whether the task wants it back (the gradient at gate 0), so the ranking keeps
        learning while the weights train in the model the plan compacts to."""
        gate = self.open_gate()
        return self.eval_gate().detach() + (gate - gate.detach())

    def constrain(self) -> None:
        """Project the parameters back into their valid range after an optimizer step."""

    def start_from(self, log_odds: torch.Tensor) -> None:
        """Set the parameters so that the decision keeps exactly the units with ``log_odds`` > 0 and the score
        ranks units as ``log_odds`` does (a one-shot plan as the starting point; see
        :func:`vtrans_kernels.prune.calibration.start_from_calibration`). ``log_odds``: float [units], no zeros."""
        raise NotImplementedError

    def keep_top(self, count: int) -> None:
        """Shift the parameters, the same for every unit (the ranking stays), so that the decision keeps the
        ``count`` best-scored units: the projection that holds the decision on the target at the end of a run."""
        raise NotImplementedError

    def _check_count(self, count: int) -> int:
        if not 0 <= int(count) <= self.units:
            raise ValueError(f"count: expected 0..{self.units} kept units, got {count}")
        return int(count)

    def _check_log_odds(self, log_odds: torch.Tensor) -> torch.Tensor:
        log_odds = torch.as_tensor(log_odds, dtype=torch.float32).detach().cpu()
        if log_odds.shape != (self.units,) or not torch.isfinite(log_odds).all() or (log_odds == 0).any():
            raise ValueError(f"log_odds: expected {self.units} finite nonzero values, got shape "
                             f"{tuple(log_odds.shape)}")
        return log_odds

    def extra_repr(self) -> str:
        return f"units={self.units}"


class VIBMask(UnitMask):
    """VIB gates ``z = mu + exp(log_sigma2 / 2) * eps`` with eps drawn per row (token); DESIGN 2.1.

    Initialisation: mu ~ N(``mu``, 0.01), log_sigma2 ~ N(``log_sigma2``, 0.01) (draws from torch's global
    generator); the defaults 1 and -9 are those of public VIB-pruning code. A unit's gate only starts to feel
    the size target once its log SNR ``log(mu^2) - log_sigma2`` nears 0, which from -9 takes about
    ``9 / mask_lr`` Adam steps, and the size target has no gradient on the way (the soft count is flat there), so
    pruning runs start near the boundary (``PruneConfig`` uses ``log_sigma2=-1``).

    Size count (:meth:`soft_count`, what the size target pulls on): ``sum sigmoid(temperature * log SNR)`` by
    default (DESIGN 2.1); with ``straight_through=T`` the decision's exact count, differentiated as the soft count
    at temperature ``T``. Pruning runs use ``T = 1`` (``PRUNING_MASK_INIT``): the soft count is flat a few tenths
    from the boundary, so a size target on it loses its grip on every clearly kept unit (MiniLM-L6 sentiment,
    Faster, target 0.9, from log sigma^2 -2: the soft count's decision reached 0.27 after 40 steps, the
    straight-through one 0.90 after 20).
    """

    method = "vib"

    def __init__(self, units: int, *, mu: float = 1.0, log_sigma2: float = -9.0, temperature: float = 10.0,
                 straight_through: float | None = None):
        super().__init__(units)
        self.mu = nn.Parameter(float(mu) + 0.01 * torch.randn(self.units))
        self.log_sigma2 = nn.Parameter(float(log_sigma2) + 0.01 * torch.randn(self.units))
        self.temperature = float(temperature)
        # The soft count sigmoid(10 * log SNR) is flat a few tenths from the boundary: a size target on it loses its
        # grip on every clearly kept unit (from log sigma^2 = -2 MiniLM's masks stopped near half the target). With
        # ``straight_through`` = T the count is the decision's exact one, with the soft count's gradient at
        # temperature T, so the target is what the masks decide.
        if straight_through is not None and not float(straight_through) > 0:
            raise ValueError(f"straight_through: expected a temperature > 0 or None, got {straight_through!r}")
        self.straight_through = None if straight_through is None else float(straight_through)

    def gate_last_dim(self, x, seed, training):
        return mask_ops.vib_gate(x, self.mu, self.log_sigma2, seed=seed if training else None, training=training)

    def unit_gates(self, rows, seed, training):
        if not training:
            return self.eval_gate()
        ones = self.mu.new_ones(rows, self.units)
        return mask_ops.vib_gate(ones, self.mu, self.log_sigma2, seed=seed, training=True)

    def fused_gate(self, seed, training):
        return dict(mu=self.mu, log_sigma2=self.log_sigma2, seed=seed if training else None, training=training)

    def log_snr(self) -> torch.Tensor:
        """``log(mu^2 / sigma2)``, the score; the unit is kept when it is positive."""
        return torch.log(self.mu.square().clamp_min(1e-30)) - self.log_sigma2

    def keep(self):
        return self.log_snr().detach() > 0

    def soft_count(self):
        if self.straight_through is None:
            return mask_ops.vib_keep_prob(self.mu, self.log_sigma2, temperature=self.temperature).sum()
        soft = mask_ops.vib_keep_prob(self.mu, self.log_sigma2, temperature=self.straight_through)
        return (self.keep().to(soft.dtype) + soft - soft.detach()).sum()

    def kl(self):
        return mask_ops.vib_kl(self.mu, self.log_sigma2)

    def score(self):
        return self.log_snr().detach()

    def scale(self):
        return self.mu.detach()

    def eval_gate(self):
        return self.mu * self.keep().to(self.mu.dtype)

    def open_gate(self):
        return self.mu

    def keep_top(self, count):
        count = self._check_count(count)
        if int(self.keep().sum()) == count:
            return
        # Move the boundary halfway between the last unit to keep and the first to drop, so neither sits on it.
        ranked = torch.sort(self.log_snr().detach(), descending=True).values
        above = ranked[count - 1] if count > 0 else ranked[0] + 2 * KEEP_TOP_MARGIN
        below = ranked[count] if count < self.units else ranked[-1] - 2 * KEEP_TOP_MARGIN
        self.shift_boundary(float(above + below) / 2)

    def shift_boundary(self, log_snr: float) -> None:
        """Move the decision boundary to ``log_snr``: every unit's log SNR falls by it (through log sigma^2, so
        mu, the value folded into the weights, stays)."""
        with torch.no_grad():
            self.log_sigma2.add_(float(log_snr))

    def start_from(self, log_odds):
        # log SNR = log_odds. Kept units keep mu = 1 (their weights as they are) and get less noise the safer they
        # are; removed units get a small mu at the default noise, the state training reaches by shrinking mu (the
        # size term's gradient on log mu^2 grows as mu falls), rather than a large variance that would inject noise
        # into every training forward.
        log_odds = self._check_log_odds(log_odds).to(self.mu.device)
        kept = log_odds > 0
        with torch.no_grad():
            self.log_sigma2.copy_(torch.where(kept, -log_odds, torch.full_like(log_odds, REMOVED_LOG_SIGMA2)))
            self.mu.copy_(torch.where(kept, torch.ones_like(log_odds),
                                      torch.exp(0.5 * (log_odds + REMOVED_LOG_SIGMA2))))


class HardConcreteMask(UnitMask):
    """Hard-concrete L0 gates (CoFi / LLM-Shearing baseline); one sample per step shared by all rows; DESIGN 2.2.

    Initialisation: ``log_alpha = log(1 - p) - log(p) + N(0, 0.01)`` for the initial drop rate ``p = drop``.
    """

    method = "hard_concrete"

    def __init__(self, units: int, *, drop: float = 0.5):
        super().__init__(units)
        if not 0.0 < drop < 1.0:
            raise ValueError(f"HardConcreteMask: drop must be in (0, 1), got {drop}")
        base = math.log(1.0 - drop) - math.log(drop)
        self.log_alpha = nn.Parameter(base + 0.01 * torch.randn(self.units))

    def gate_last_dim(self, x, seed, training):
        return x * self.unit_gates(0, seed, training).to(x.dtype)

    def unit_gates(self, rows, seed, training):
        if not training:
            return self.eval_gate()
        return mask_ops.hard_concrete_sample(self.log_alpha, seed=seed)

    def fused_gate(self, seed, training):
        return dict(out_gate=self.unit_gates(0, seed, training))

    def training_keep(self, seed):
        return self.unit_gates(0, seed, True).detach() != 0

    def keep(self):
        return self.eval_gate().detach() != 0

    def soft_count(self):
        return mask_ops.hard_concrete_expected_l0(self.log_alpha).sum()

    def score(self):
        return self.log_alpha.detach()

    def scale(self):
        return self.open_gate().detach()

    def eval_gate(self):
        return mask_ops.hard_concrete_deterministic(self.log_alpha)

    def open_gate(self):
        return torch.sigmoid(0.8 * self.log_alpha / mask_ops.BETA)

    def constrain(self):
        with torch.no_grad():
            self.log_alpha.clamp_(LOG_ALPHA_MIN, LOG_ALPHA_MAX)

    def start_from(self, log_odds):
        log_odds = self._check_log_odds(log_odds).to(self.log_alpha.device)
        self._set_shifted(log_odds, int((log_odds > 0).sum()))

    def keep_top(self, count):
        count = self._check_count(count)
        if int(self.keep().sum()) != count:
            self._set_shifted(self.log_alpha.detach().clone(), count)

    def _set_shifted(self, log_alpha: torch.Tensor, count: int) -> None:
        # The deterministic mask keeps the top round(expected L0) units: shift log_alpha so the expected L0 rounds
        # to ``count``; the kept units are then the top ones (a shift keeps the ranking).
        expected = lambda shift: float(mask_ops.hard_concrete_expected_l0(  # noqa: E731
            (log_alpha + shift).clamp(LOG_ALPHA_MIN, LOG_ALPHA_MAX)).sum())
        low = LOG_ALPHA_MIN - float(log_alpha.max()) - 1
        high = LOG_ALPHA_MAX - float(log_alpha.min()) + 1
        for _ in range(60):
            mid = (low + high) / 2
            low, high = (mid, high) if expected(mid) < count else (low, mid)
        with torch.no_grad():
            self.log_alpha.copy_((log_alpha + (low + high) / 2).clamp(LOG_ALPHA_MIN, LOG_ALPHA_MAX))


METHODS = {"vib": VIBMask, "hard_concrete": HardConcreteMask}


INIT_KEYS = {"vib": ("mu", "log_sigma2", "straight_through"), "hard_concrete": ("drop",)}


def make_mask(method: str, units: int, init: dict | None = None) -> UnitMask:
    """A mask of ``method`` ("vib" or "hard_concrete") over ``units`` units; ``init`` overrides the initial
    values (``{"mu", "log_sigma2"}`` for VIB, ``{"drop"}`` for hard-concrete) and VIB's size count
    (``{"straight_through": T}``, see :class:`VIBMask`)."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {sorted(METHODS)}, got {method!r}")
    unknown = set(init or {}) - set(INIT_KEYS[method])
    if unknown:
        raise ValueError(f"mask_init: {method} masks take {INIT_KEYS[method]}, got {sorted(unknown)}")
    return METHODS[method](units, **(init or {}))
