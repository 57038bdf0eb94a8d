"""AdaRound for the weights of linear layers (Nagel et al., ICML 2020, "Up or Down? Adaptive Rounding for
Post-Training Quantization").

Round-to-nearest rounds every weight on its own; AdaRound chooses for each weight whether to round down (floor)
or up (ceil) so that the layer's *output* on calibration inputs stays close to its float output. It learns a
tensor ``V`` shaped like the weight and minimises

    mean over rows of ||W~ x - W x||^2  +  reg_weight * sum(1 - |2 h(V) - 1|^beta)
    W~ = s * (clamp(floor(W / s) + h(V), qmin - zp, qmax - zp)),    h(V) = clamp(1.2 * sigmoid(V) - 0.1, 0, 1)

with Adam on ``V`` alone. The regulariser is off for the first ``warmup`` fraction of the iterations, then its
``beta`` falls linearly from 20 to 2, driving every ``h(V)`` to 0 or 1; at the end ``h`` becomes ``V >= 0``.

The grid is the one a dynamic weight quantizer uses: scale and zero point from the weight's own min/max
(``int_qparams`` of ``current_minmax``, per output channel or per tensor). The weights that set that range are
pinned to the grid's ends (``+-qmax`` symmetric, ``qmin``/``qmax`` asymmetric), so the rounded weight keeps the
range, and its scale is settled to the fixed point of re-estimation: quantizing the result again with its own
min/max (a ``QuantMeasure`` with ``dynamic=True``) returns it unchanged, bit for bit, symmetric or asymmetric.
Weights already on the grid (``W / s`` an integer to within float32 rounding, zeros included) stay where
they are, so rounding a rounded weight again returns it unchanged.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..core.estimators import current_minmax, int_qparams
from ..core.formats import check_bits, fake_quant_int
from ..plugin.layers import QuantizedLinear

__all__ = ["adaround_weight", "adaround_model"]

# the stretch of the rectified sigmoid (the paper's zeta and gamma): h reaches exactly 0 and 1 at finite V
ZETA, GAMMA = 1.1, -0.1
_CHUNK = 4096  # rows per matmul when measuring the reconstruction error over all calibration inputs
# |W / s - k| <= _ON_GRID * max(|k|, 1): W is taken to be the grid point k (float32 rounding of k * s, k <= 2^16)
_ON_GRID = 2.0**-16


def _rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def _inverse_rectified_sigmoid(h: torch.Tensor) -> torch.Tensor:
    """``V`` with ``_rectified_sigmoid(V) == h`` for ``0 <= h < 1``."""
    return -torch.log((ZETA - GAMMA) / (h - GAMMA) - 1.0)


def _check_number(name: str, value, lo: float, hi: float = math.inf, integer: bool = False,
                  lo_open: bool = False) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not (value > lo if lo_open else value >= lo) or not value <= hi:
        kind = "an integer" if integer else "a number"
        bound = f"> {lo}" if lo_open else f">= {lo}"
        raise ValueError(f"{name} must be {kind} {bound}" + (f" and <= {hi}" if hi != math.inf else "")
                         + f", got {value!r}")


def _check_grid(bits, signed, symmetric, per_channel) -> None:
    check_bits(bits)
    for name, value in (("signed", signed), ("symmetric", symmetric), ("per_channel", per_channel)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")


def _check_optimizer(iters, lr, reg_weight, beta, warmup, batch_size) -> None:
    _check_number("iters", iters, 0, integer=True)
    _check_number("lr", lr, 0, lo_open=True)
    _check_number("reg_weight", reg_weight, 0)
    if not (isinstance(beta, (tuple, list)) and len(beta) == 2
            and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in beta)
            and beta[0] >= beta[1] > 0):
        raise ValueError(f"beta must be a pair (start, end) with start >= end > 0, got {beta!r}")
    _check_number("warmup", warmup, 0, 1)
    _check_number("batch_size", batch_size, 1, integer=True)


def _beta_at(t: int, iters: int, warm: int, beta: tuple[float, float]) -> float:
    """Linear decay from ``beta[0]`` (at the end of the warm-up) to ``beta[1]`` (at the last iteration)."""
    rel = (t - warm) / max(1, iters - warm)
    return beta[1] + (beta[0] - beta[1]) * max(0.0, 1.0 - rel)


def _grid(w: torch.Tensor, bits: int, signed: bool, symmetric: bool, axis: int | None):
    """Scale and zero point (both shaped to broadcast against ``w``: ``(out, 1)`` or ``(1, 1)``), qmin, qmax and
    the low and high ends of the grid's range that elements of ``w`` may sit on (``None``: no element defines
    that end)."""
    lo, hi = current_minmax(w, axis)
    scale, zp, qmin, qmax = int_qparams(lo, hi, bits, signed, symmetric)
    shape = (-1, 1) if axis is not None else (1, 1)
    scale = scale.reshape(shape)
    zp = torch.zeros_like(scale) if zp is None else zp.reshape(shape)
    lo, hi = lo.reshape(shape), hi.reshape(shape)
    if symmetric and signed:
        amax = torch.maximum(-lo, hi)
        low_end, high_end = -amax, amax
    elif symmetric:
        low_end, high_end = None, hi  # unsigned: the grid starts at 0
    else:
        low_end, high_end = lo, hi
    return scale, zp, qmin, qmax, low_end, high_end


def _settle_scale(q: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, bits: int, signed: bool,
                  symmetric: bool, axis: int | None) -> torch.Tensor:
    """``q * scale`` (``q``: integers minus the zero point) with ``scale`` moved (by float32 rounding steps) to
    the scale that ``int_qparams`` gives for the result's own range, so that re-quantizing it changes nothing.
    (``(qmax * s) / qmax`` need not be ``s`` in floating point: the fixed point is usually reached in one step.)"""
    for _ in range(16):
        w = q * scale
        s2, zp2, _, _ = int_qparams(*current_minmax(w, axis), bits, signed, symmetric)
        s2 = s2.reshape(scale.shape)
        if zp2 is not None and not torch.equal(zp2.reshape(zp.shape), zp):
            raise RuntimeError("AdaRound changed the zero point of the rounded weight's range (a bug)")
        if torch.equal(s2, scale):
            return w
        scale = s2
    raise RuntimeError("the scale of the rounded weight did not settle (a bug)")


def _reconstruction_mse(w_hat: torch.Tensor, w: torch.Tensor, x: torch.Tensor, xq: torch.Tensor | None) -> float:
    """Mean over rows and outputs of ``(w_hat xq - w x)^2`` (``xq = x`` when None), in chunks of rows."""
    total = 0.0
    with torch.no_grad():
        for i in range(0, x.shape[0], _CHUNK):
            xb = x[i:i + _CHUNK]
            r = xb @ (w_hat - w).T if xq is None else xq[i:i + _CHUNK] @ w_hat.T - xb @ w.T
            total += float(r.double().pow(2).sum())
    return total / (x.shape[0] * w.shape[0])


def adaround_weight(
    weight: torch.Tensor,
    inputs: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    bits: int,
    signed: bool = True,
    symmetric: bool = True,
    per_channel: bool = True,
    iters: int = 1000,
    lr: float = 1e-2,
    reg_weight: float = 0.01,
    beta: tuple[float, float] = (20.0, 2.0),
    warmup: float = 0.2,
    batch_size: int = 1024,
    input_quant: Callable[[torch.Tensor], torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict]:
    """Round ``weight`` onto its ``bits``-wide integer grid with AdaRound, for the calibration ``inputs``.

    Args:
        weight: ``(out, in)`` floating weight of a linear layer ``y = x W^T + b``.
        inputs: ``(N, in)`` floating calibration inputs of that layer (what its matmul receives).
        bias: ``(out,)`` or None; it cancels from every output difference, so it is only checked.
        bits, signed, symmetric, per_channel: the grid (``formats.int_grid``), its scale and zero point from the
            weight's own min/max, one range per output channel (axis 0) or one for the tensor.
        iters, lr: Adam steps on ``V`` and their learning rate; each step uses ``batch_size`` rows of ``inputs``
            drawn at random with ``generator`` (all rows when there are no more than ``batch_size``).
        reg_weight, beta, warmup: the rounding regulariser's weight, its exponent's ``(start, end)`` and the
            fraction of ``iters`` run without it first.
        input_quant: applied once to all of ``inputs`` (no gradient): the rounded layer sees the quantized inputs
            and the target stays ``W x`` on the float inputs (e.g. W4A8).
        generator: a ``torch.Generator`` (CPU) for the minibatches; None seeds a fresh one with 0. The result is
            deterministic given it.

    The loss is summed over outputs and averaged over rows (as the reference implementations do); the reported
    errors are plain means over rows and outputs.

    Returns ``(rounded, report)``: ``rounded`` has ``weight``'s shape and dtype and holds ``scale * (q - zp)``
    with integer ``q`` in ``[qmin, qmax]``, each ``q - zp`` the floor or the ceil of ``W / scale`` (computed in
    float32; exact on the grid for float32 weights). ``report``: ``mse_nearest`` and ``mse_adaround`` (the
    reconstruction error of round-to-nearest and of AdaRound on all of ``inputs``), ``flipped`` (the fraction of
    weights rounded differently from nearest), ``rows``, ``iters`` and ``seconds``.

    Raises ValueError naming the argument for bits outside 2..16, shapes that do not fit, non-finite weights or
    inputs, or optimiser settings out of range.
    """
    start = time.perf_counter()
    _check_grid(bits, signed, symmetric, per_channel)
    _check_optimizer(iters, lr, reg_weight, beta, warmup, batch_size)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point() \
            or weight.numel() == 0:
        raise ValueError(f"weight must be a non-empty 2-D floating tensor (out, in), got "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
    out_features, in_features = weight.shape
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 2 or inputs.shape[1] != in_features \
            or inputs.shape[0] == 0 or not inputs.is_floating_point():
        got = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ValueError(f"inputs must be a floating tensor (N, {in_features}) with N >= 1 (the weight has "
                         f"{in_features} input features), got {got}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (out_features,)):
        got = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
        raise ValueError(f"bias must be None or a tensor of shape ({out_features},), got {got}")
    if input_quant is not None and not callable(input_quant):
        raise ValueError(f"input_quant must be a callable or None, got {type(input_quant).__name__}")
    if not bool(torch.isfinite(weight).all()):
        raise ValueError("weight must be finite (it has NaN or inf elements)")
    if not bool(torch.isfinite(inputs).all()):
        raise ValueError("inputs must be finite (they have NaN or inf elements)")

    w = weight.detach().float()
    x = inputs.detach().to(device=w.device, dtype=torch.float32)
    axis = 0 if per_channel else None
    with torch.no_grad():
        xq = None if input_quant is None else input_quant(x).float()
        scale, zp, qmin, qmax, low_end, high_end = _grid(w, bits, signed, symmetric, axis)
        q_lo, q_hi = qmin - zp, qmax - zp  # the grid's ends, as integers minus the zero point
        u = w / scale
        base = torch.floor(u)
        frac = u - base
        # weights on the grid already stay there (floor == ceil), also when float rounding put them a few ulps off
        nearest = torch.round(u)
        on_grid = (u - nearest).abs() <= _ON_GRID * nearest.abs().clamp(min=1.0)
        base = torch.where(on_grid, nearest, base)
        free = ~on_grid
        # the weights that set the range go to the grid's ends, so the rounded weight keeps its range. That is a
        # floor or a ceil: symmetric, amax / s is qmax; asymmetric, zp = qmin - round(lo / s) puts lo / s + zp
        # within half a step of qmin and hi / s + zp = lo / s + zp + (qmax - qmin) within half a step of qmax
        pinned_high = (w == high_end) & (high_end > 0)
        base = torch.where(pinned_high, q_hi, base)
        free &= ~pinned_high
        if low_end is not None:
            pinned_low = (w == low_end) & (low_end < 0)
            base = torch.where(pinned_low, q_lo, base)
            free &= ~pinned_low
        free_f = free.float()
        rtn = fake_quant_int(w, scale.reshape(-1), None if symmetric else zp.reshape(-1), qmin, qmax, axis)
        q_rtn = torch.round(rtn / scale)

    v = nn.Parameter(_inverse_rectified_sigmoid(frac))
    optimizer = torch.optim.Adam([v], lr=lr)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    n = x.shape[0]
    warm = int(warmup * iters)
    for t in range(iters):
        if n > batch_size:
            idx = torch.randint(n, (batch_size,), generator=g).to(x.device)
            xb, xqb = x[idx], None if xq is None else xq[idx]
        else:
            xb, xqb = x, xq
        h = _rectified_sigmoid(v)
        w_soft = (base + h * free_f).clamp(q_lo, q_hi) * scale
        r = xb @ (w_soft - w).T if xqb is None else xqb @ w_soft.T - xb @ w.T
        loss = r.pow(2).sum(1).mean()
        if t >= warm and reg_weight > 0:
            b = _beta_at(t, iters, warm, beta)
            loss = loss + reg_weight * ((1.0 - (2.0 * h - 1.0).abs().pow(b)) * free_f).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with torch.no_grad():
        q = (base + (v >= 0).float() * free_f).clamp(q_lo, q_hi)
        rounded = _settle_scale(q, scale, zp, bits, signed, symmetric, axis)
        report = {
            "mse_nearest": _reconstruction_mse(rtn, w, x, xq),
            "mse_adaround": _reconstruction_mse(rounded, w, x, xq),
            "flipped": float((q != q_rtn).float().mean()),
            "rows": n,
            "iters": iters,
            "seconds": time.perf_counter() - start,
        }
    return rounded.to(weight.dtype), report


def _layer_inputs(module: QuantizedLinear, batches: Sequence, forward: Callable) -> torch.Tensor | None:
    """What ``module``'s matmul receives (after its input quantizer) over ``forward(batch)`` for every batch, as
    ``(rows, in_features)`` float32; None if the layer never ran."""
    rows: list[torch.Tensor] = []

    def keep(x: torch.Tensor) -> None:
        rows.append(x.detach().reshape(-1, x.shape[-1]).float())

    if module.input_quant is not None:
        handle = module.input_quant.register_forward_hook(lambda mod, args, out: keep(out))
    else:
        handle = module.register_forward_pre_hook(lambda mod, args: keep(args[0]))
    try:
        with torch.no_grad():
            for batch in batches:
                forward(batch)
    finally:
        handle.remove()
    return torch.cat(rows) if rows else None


def _check_weight_quant(name: str, module: QuantizedLinear, bits: int, signed: bool, symmetric: bool,
                        per_channel: bool) -> None:
    """The layer's weight quantizer (if it quantizes) must round onto the grid AdaRound rounds onto, taken from
    the weight's own range; otherwise it would round the result again, differently."""
    quant = module.weight_quant
    if quant is None or quant.spec.mode != "quantize":
        return
    spec = quant.spec
    if not spec.is_int:
        raise ValueError(f"{name}: its weight quantizer uses format {spec.format!r}; AdaRound rounds onto integer "
                         f"grids (intN)")
    for key, value in (("bits", bits), ("signed", signed), ("symmetric", symmetric), ("per_channel", per_channel)):
        if getattr(spec, key) != value:
            raise ValueError(f"{name}: its weight quantizer has {key}={getattr(spec, key)!r} but adaround_model "
                             f"was given {key}={value!r}; they must agree")
    if spec.estimator != "minmax":
        raise ValueError(f"{name}: its weight quantizer estimates ranges with {spec.estimator}; AdaRound rounds onto "
                         f"the grid of the weight's min-max range, which a clipped range would round again "
                         f"(--estimatorw minmax)")
    if not spec.dynamic and int(quant.num_batches_tracked) > 0:
        raise ValueError(f"{name}: its weight quantizer uses recorded running ranges; AdaRound needs one that takes "
                         f"the weight's own range (dynamic=True)")


# adaround_weight's optimiser keywords and their defaults
OPTIMIZER_DEFAULTS = {"iters": 1000, "lr": 1e-2, "reg_weight": 0.01, "beta": (20.0, 2.0), "warmup": 0.2,
                      "batch_size": 1024}


def adaround_model(
    model: nn.Module,
    batches: Sequence,
    forward: Callable[[object], object],
    *,
    bits: int,
    signed: bool = True,
    symmetric: bool = True,
    per_channel: bool = True,
    max_rows: int = 20000,
    seed: int = 0,
    skip: Callable[[str], bool] = lambda name: False,
    log: Callable[[str], None] | None = None,
    **optimizer,
) -> dict[str, dict]:
    """AdaRound every ``QuantizedLinear`` of ``model`` whose name ``skip`` does not reject, one after the other in
    module order, writing each rounded weight into ``module.weight`` in place.

    For each layer, ``forward(batch)`` runs for every batch of ``batches`` (in eval mode, without gradients) and
    a hook records what the layer's matmul receives (the output of its ``input_quant``, or its input when it has
    none); the rows (at most ``max_rows``, a seeded random subset) go to ``adaround_weight`` with the grid
    arguments given here and its optimiser keywords (``iters``, ``lr``, ``reg_weight``, ``beta``, ``warmup``,
    ``batch_size``) in ``optimizer``. Layers already rounded shape the inputs of later ones, as in
    the paper. Each layer's weight quantizer is left as it is: when it quantizes it must use the same integer
    grid from the weight's current range (``dynamic=True``), and then it returns the rounded weight unchanged.
    Layers without an active weight quantizer are rounded onto the given grid too.

    Costs one pass over ``batches`` per layer. Deterministic given ``seed``. ``log`` (e.g. ``print`` or
    ``logger.info``) gets one line per layer. The model's training mode is restored at the end.

    Returns ``{layer name: adaround_weight's report}``. Raises ValueError for bad arguments or a layer whose weight
    quantizer uses another grid (before any weight changes), RuntimeError for a layer that ``forward`` never runs
    (e.g. fairseq's fused attention path, taken when no quantizer of the attention is active: ``skip`` it).
    """
    _check_grid(bits, signed, symmetric, per_channel)
    unknown = sorted(set(optimizer) - set(OPTIMIZER_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown AdaRound option(s) {unknown}; allowed: {', '.join(OPTIMIZER_DEFAULTS)}")
    _check_optimizer(**{**OPTIMIZER_DEFAULTS, **optimizer})
    _check_number("max_rows", max_rows, 1, integer=True)
    batches = list(batches)
    if not batches:
        raise ValueError("batches must hold at least one batch")
    if not callable(forward):
        raise ValueError(f"forward must be a callable, got {type(forward).__name__}")
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, QuantizedLinear) and not skip(name)]
    for name, module in layers:
        _check_weight_quant(name, module, bits, signed, symmetric, per_channel)

    reports: dict[str, dict] = {}
    was_training = model.training
    model.eval()
    try:
        for i, (name, module) in enumerate(layers):
            inputs = _layer_inputs(module, batches, forward)
            if inputs is None:
                raise RuntimeError(f"{name}: the layer never ran during forward(batch), so it has no calibration "
                                   f"inputs; skip it")
            g = torch.Generator().manual_seed(seed + i)
            if inputs.shape[0] > max_rows:
                keep = torch.randperm(inputs.shape[0], generator=g)[:max_rows].sort().values
                inputs = inputs[keep.to(inputs.device)]
            rounded, report = adaround_weight(
                module.weight.detach(), inputs, bits=bits, signed=signed, symmetric=symmetric,
                per_channel=per_channel, generator=g, **optimizer)
            with torch.no_grad():  # not .data: the copy must bump the weight's version (quantizers cache by it)
                module.weight.copy_(rounded)
            reports[name] = report
            if log is not None:
                log(f"adaround {name}: mse nearest {report['mse_nearest']:.4g} -> adaround "
                    f"{report['mse_adaround']:.4g}, {100 * report['flipped']:.1f}% flipped, {report['rows']} rows, "
                    f"{report['seconds']:.1f}s")
    finally:
        model.train(was_training)
    return reports
