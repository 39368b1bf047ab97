"""Bitwise A/B of two builds of the kernels: every entry point, the same inputs, the same bits.

A refactoring of the kernels (or of the flags they are compiled with) must not change a bit of
what they return. Build each variant into a directory of its own (e.g. `pip install --no-deps
--no-build-isolation --target DIR .`), then:

    python benchmarks/ab_bits.py DIR_A/softmaxloss DIR_B/softmaxloss [--kernels baseline,avx2]

or two builds of one install: `ab_bits.py DIR/softmaxloss DIR/softmaxloss --kernels avx2
--kernels-b avx512`.

Each build of the table (`softmaxloss/_builds.py` in DIR_A; default: every one this CPU runs) is
loaded from both directories into one process and called directly, on the same inputs, for
every kernel entry point: `cross_entropy_index` (the block path, C <= 23 float32 / 16 float64,
and the row path; class weights, sample weights, ignored rows, an ignore_index that is a class,
label smoothing including 1, z-loss, sum and mean, loss only and with the gradient, written
apart or in place; out-of-range classes, which it refuses), `cross_entropy_probs` (float32 and
float64 targets, rows that do not sum to 1), `gradient_hessian`, `softmax`, `log_softmax`,
`logsumexp` and `exp`; float32 and float64 logits; rows views that are contiguous, whose classes
are strided, and whose rows are (A, B) with B > 1 (an inner class axis); hostile rows (+inf,
-inf, NaN, huge logits) and options that overflow the gradient's scale (tiny W, huge weights).
Every output array and returned value of A is compared with B's as bytes (so also the sign and
payload of a NaN; a difference in those only is reported as such). Prints the number of calls
compared per build and each difference; exits 1 on any.
"""

from __future__ import annotations

import argparse
import itertools
import runpy
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from ab_kernels import load  # this folder's interleaved timing A/B: a build's module, by path


# ---- inputs ------------------------------------------------------------------------------

N_ROWS = 131  # two full blocks of 64 rows and a remainder of 3
CLASSES = [1, 2, 3, 4, 7, 8, 13, 16, 17, 23, 24, 32, 40, 100, 1000]
DTYPES = [np.float32, np.float64]


def logits(rng: np.random.Generator, n_rows: int, n_classes: int, dtype: Any, hostile: bool) -> np.ndarray:
    x = (rng.standard_normal((n_rows, n_classes)) * 4).astype(dtype)
    if hostile and n_rows >= 8:
        x[1, :] = -np.inf                        # every class impossible
        x[2, n_classes // 2] = np.inf            # a certain class
        x[3, 0] = np.nan
        x[4, :] = x[4, :] * 1e4 + 3e4            # huge logits (lse^2 overflows float32 scales)
        x[5, :] = 0.0                            # ties everywhere
        x[6, -1] = -np.inf
    return x


def layouts(x: np.ndarray) -> Iterator[tuple[str, Callable[[np.ndarray], np.ndarray]]]:
    """Ways to present (N, C) data to a kernel as an (A, B, C) rows view: each a function that
    lays out an (N, C) array (or an (N,) per-row one, as (A, B)) so."""
    n_rows = x.shape[0]

    def contiguous(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a).reshape((n_rows, 1) + a.shape[1:])

    def class_strided(a: np.ndarray) -> np.ndarray:
        if a.ndim == 1:
            return np.repeat(a, 2)[::2].reshape(n_rows, 1)
        return np.repeat(a, 2, axis=1).reshape(n_rows, 1, -1)[:, :, ::2]

    def inner_class_axis(a: np.ndarray) -> np.ndarray:  # logits (A, C, B) with axis=1
        split = 1 if n_rows % 2 else 2
        b = n_rows // split
        if a.ndim == 1:
            return np.ascontiguousarray(a.reshape(split, b).T).T
        moved = np.ascontiguousarray(a.reshape(split, b, -1).transpose(0, 2, 1))
        return moved.transpose(0, 2, 1)

    yield "contiguous", contiguous
    yield "class-strided", class_strided
    yield "inner-class-axis", inner_class_axis


def class_weights(rng: np.random.Generator, n_classes: int, kind: str) -> np.ndarray | None:
    if kind == "none":
        return None
    if kind == "extreme":  # the gradient's scale overflows (see divide_last)
        return np.where(np.arange(n_classes) % 2 == 0, 1e-300, 1e300)
    weights = rng.uniform(0.2, 3.0, n_classes)
    weights[0] = 0.0
    return weights


def sample_weights(rng: np.random.Generator, n_rows: int, kind: str) -> np.ndarray | None:
    if kind == "none":
        return None
    s = rng.uniform(0.0, 2.0, n_rows)
    if kind == "tiny":  # subnormal and zero weights, a tiny W
        s = s * 1e-308
        s[::7] = 5e-324
        s[::11] = 0.0
    return s


def class_targets(rng: np.random.Generator, n_rows: int, n_classes: int, ignore_index: int, bad: bool) -> np.ndarray:
    y = rng.integers(0, n_classes, n_rows)
    y[::5] = ignore_index
    if bad:
        y[n_rows // 3] = n_classes
        y[-1] = -1
    return y.astype(np.int64)


# ---- calls -------------------------------------------------------------------------------

Outputs = list[tuple[str, Any]]


def as_bytes(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return (value.dtype.str, value.shape, np.ascontiguousarray(value).tobytes())
    if isinstance(value, float):
        return np.float64(value).tobytes()
    if isinstance(value, tuple):
        return tuple(as_bytes(v) for v in value)
    return repr(value)


def cross_entropy_index_cases(rng: np.random.Generator) -> Iterator[tuple[str, Callable[[ModuleType], Outputs]]]:
    option_sets = [  # (class weights, sample weights, ignore_index, label_smoothing, z_loss)
        ("none", "none", -100, 0.0, 0.0),
        ("none", "none", -100, 0.1, 0.0),
        ("none", "none", -100, 0.0, 1e-3),
        ("random", "none", -100, 0.1, 1e-4),
        ("random", "random", 0, 0.0, 0.0),
        ("none", "random", -100, 1.0, 0.0),
        ("random", "random", -100, 0.3, 2e-2),
        ("extreme", "none", -100, 0.1, 0.0),
        ("random", "tiny", -100, 0.1, 1e-4),
        ("none", "tiny", -100, 0.0, 0.0),
    ]
    for n_classes, dtype, hostile in itertools.product(CLASSES, DTYPES, [False, True]):
        x = logits(rng, N_ROWS, n_classes, dtype, hostile)
        for (w_kind, s_kind, ignore_index, eps, z), (layout_name, lay) in itertools.product(option_sets, layouts(x)):
            weight = class_weights(rng, n_classes, w_kind)
            s = sample_weights(rng, N_ROWS, s_kind)
            for bad, mean, grad_kind in itertools.product([False, True], [False, True], ["none", "apart", "in-place"]):
                if bad and (grad_kind == "in-place" or mean):
                    continue
                y = class_targets(rng, N_ROWS, n_classes, ignore_index, bad)
                name = (f"cross_entropy_index C={n_classes} {np.dtype(dtype).name} {'hostile ' if hostile else ''}"
                        f"{layout_name} w={w_kind} s={s_kind} ignore={ignore_index} eps={eps} z={z} "
                        f"mean={mean} grad={grad_kind}{' bad-class' if bad else ''}")

                def call(k: ModuleType, x=x, y=y, weight=weight, s=s, ignore_index=ignore_index, eps=eps, z=z,
                         mean=mean, grad_kind=grad_kind, lay=lay) -> Outputs:
                    xv = lay(x.copy())
                    grad = None if grad_kind == "none" else xv if grad_kind == "in-place" else lay(np.full_like(x, 7))
                    row_loss = np.full((xv.shape[0], xv.shape[1]), -3.0)
                    sv = None if s is None else lay(s)
                    result = k.cross_entropy_index(xv, lay(y), weight, sv, ignore_index, eps, z, mean, row_loss, grad, 1)
                    return [("result", result), ("row_loss", row_loss if result is not None else None),
                            ("grad", grad)]

                yield name, call


def cross_entropy_probs_cases(rng: np.random.Generator) -> Iterator[tuple[str, Callable[[ModuleType], Outputs]]]:
    option_sets = [("none", "none", 0.0, 0.0), ("random", "random", 0.1, 1e-3), ("none", "none", 1.0, 0.0),
                   ("extreme", "tiny", 0.2, 1e-4)]
    for n_classes, dtype, target_dtype, hostile in itertools.product(CLASSES, DTYPES, DTYPES, [False, True]):
        x = logits(rng, N_ROWS, n_classes, dtype, hostile)
        t = rng.dirichlet(np.ones(n_classes), N_ROWS)
        t[::4] *= 1.5  # rows that do not sum to 1
        t = t.astype(target_dtype)
        for (w_kind, s_kind, eps, z), (layout_name, lay), mean, grad_kind in itertools.product(
            option_sets, layouts(x), [False, True], ["none", "apart", "in-place"]
        ):
            weight = class_weights(rng, n_classes, w_kind)
            s = sample_weights(rng, N_ROWS, s_kind)
            name = (f"cross_entropy_probs C={n_classes} {np.dtype(dtype).name} target {np.dtype(target_dtype).name} "
                    f"{'hostile ' if hostile else ''}{layout_name} w={w_kind} s={s_kind} eps={eps} z={z} "
                    f"mean={mean} grad={grad_kind}")

            def call(k: ModuleType, x=x, t=t, weight=weight, s=s, eps=eps, z=z, mean=mean, grad_kind=grad_kind,
                     lay=lay) -> Outputs:
                xv = lay(x.copy())
                grad = None if grad_kind == "none" else xv if grad_kind == "in-place" else lay(np.full_like(x, 7))
                row_loss = np.full((xv.shape[0], xv.shape[1]), -3.0)
                sv = None if s is None else lay(s)
                result = k.cross_entropy_probs(xv, lay(t), weight, sv, eps, z, mean, row_loss, grad, 1)
                return [("result", result), ("row_loss", row_loss), ("grad", grad)]

            yield name, call


def row_function_cases(rng: np.random.Generator) -> Iterator[tuple[str, Callable[[ModuleType], Outputs]]]:
    for n_classes, dtype, hostile in itertools.product(CLASSES, DTYPES, [False, True]):
        x = logits(rng, N_ROWS, n_classes, dtype, hostile)
        y = rng.integers(0, n_classes, N_ROWS).astype(np.int64)
        y[N_ROWS // 2] = n_classes  # gradient_hessian makes such a row NaN
        for (layout_name, lay), in_place in itertools.product(layouts(x), [False, True]):
            label = f"C={n_classes} {np.dtype(dtype).name} {'hostile ' if hostile else ''}{layout_name}"
            label += " in-place" if in_place else ""

            def softmax(k: ModuleType, x=x, lay=lay, in_place=in_place) -> Outputs:
                outputs = []
                for log_output in (False, True):
                    xv = lay(x.copy())
                    out = xv if in_place else lay(np.full_like(x, 7))
                    k.softmax(xv, out, log_output, 1)
                    outputs.append((f"log_output={log_output}", out))
                return outputs

            def gradient_hessian(k: ModuleType, x=x, y=y, lay=lay, in_place=in_place) -> Outputs:
                outputs = []
                for s in (None, rng_weights(N_ROWS)):
                    xv = lay(x.copy())
                    grad = xv if in_place else lay(np.full_like(x, 7))
                    hess = lay(np.full_like(x, 7))
                    k.gradient_hessian(xv, lay(y), None if s is None else lay(s), grad, hess, 1)
                    outputs += [("grad", grad), ("hess", hess)]
                return outputs

            yield f"softmax {label}", softmax
            yield f"gradient_hessian {label}", gradient_hessian
            if not in_place:
                def logsumexp(k: ModuleType, x=x, lay=lay) -> Outputs:
                    xv = lay(x.copy())
                    out = np.full(xv.shape[:2], 7.0)
                    k.logsumexp(xv, out, 1)
                    return [("out", out)]

                yield f"logsumexp {label}", logsumexp


def rng_weights(n: int) -> np.ndarray:
    return np.random.default_rng(n).uniform(0.0, 2.0, n)


def threaded_cases(rng: np.random.Generator) -> Iterator[tuple[str, Callable[[ModuleType], Outputs]]]:
    """Large enough for two threads, each with its own scratch (class-strided rows)."""
    for n_classes, dtype in itertools.product([4, 16, 23, 32, 100], DTYPES):
        n_rows = 8192
        x = logits(rng, n_rows, n_classes, dtype, True)
        y = class_targets(rng, n_rows, n_classes, -100, False)
        weight = class_weights(rng, n_classes, "random")

        def call(k: ModuleType, x=x, y=y, weight=weight, n_rows=n_rows) -> Outputs:
            outputs = []
            for eps, z in ((0.0, 0.0), (0.1, 1e-3)):
                xv = np.repeat(x, 2, axis=1).reshape(n_rows, 1, -1)[:, :, ::2]
                grad = np.full_like(xv, 7)
                row_loss = np.empty((n_rows, 1))
                result = k.cross_entropy_index(xv, y[:, None], weight, None, -100, eps, z, True, row_loss, grad, 2)
                outputs += [("result", result), ("row_loss", row_loss), ("grad", grad)]
            return outputs

        yield f"cross_entropy_index 2 threads C={n_classes} {np.dtype(dtype).name} class-strided", call


def exp_cases(rng: np.random.Generator) -> Iterator[tuple[str, Callable[[ModuleType], Outputs]]]:
    for dtype in DTYPES:
        x = np.concatenate([rng.uniform(-120, 90, 4096), [0.0, -0.0, np.inf, -np.inf, np.nan, -800.0, 800.0]])
        x = x.astype(dtype)

        def call(k: ModuleType, x=x) -> Outputs:
            out = np.full_like(x, 7)
            k.exp(x, out)
            return [("out", out)]

        yield f"exp {np.dtype(dtype).name}", call


def cases() -> Iterator[tuple[str, Callable[[ModuleType], Outputs]]]:
    rng = np.random.default_rng(20240613)
    yield from cross_entropy_index_cases(rng)
    yield from cross_entropy_probs_cases(rng)
    yield from row_function_cases(rng)
    yield from threaded_cases(rng)
    yield from exp_cases(rng)


# ---- comparison --------------------------------------------------------------------------

def same_values(a: Any, b: Any) -> bool:
    """np.array_equal with NaN equal to NaN, whatever its sign and payload."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(same_values(x, y) for x, y in zip(a, b))
    if isinstance(a, (np.ndarray, float)) and isinstance(b, (np.ndarray, float)):
        return bool(np.array_equal(a, b, equal_nan=True))
    return repr(a) == repr(b)


def compare(a: ModuleType, b: ModuleType) -> tuple[int, list[str]]:
    count, differences = 0, []
    with np.errstate(all="ignore"):
        for name, call in cases():
            out_a, out_b = call(a), call(b)
            count += 1
            for (what, value_a), (_, value_b) in zip(out_a, out_b):
                if as_bytes(value_a) != as_bytes(value_b):
                    kind = "only a NaN's sign or payload" if same_values(value_a, value_b) else "values"
                    differences.append(f"{name}: {what} differs ({kind})")
    return count, differences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="directory holding build A's compiled kernels")
    parser.add_argument("b", help="directory holding build B's compiled kernels")
    parser.add_argument("--kernels", help="comma-separated rows of softmaxloss._builds (default: all this CPU runs)")
    parser.add_argument("--kernels-b", help="the row of B compared with each of A's (default: the same row), "
                        "e.g. --kernels avx2 --kernels-b avx512 on one install twice")
    args = parser.parse_args()
    builds = runpy.run_path(str(Path(args.a) / "_builds.py"))["BUILDS"]
    cpu = load(args.a, "_cpu")
    wanted = args.kernels.split(",") if args.kernels else [build.name for build in builds]
    failed = False
    for build in builds:
        if build.name not in wanted:
            continue
        if build.cpu is not None and not cpu.supports(build.cpu):
            print(f"{build.name}: skipped, this CPU lacks {build.cpu}")
            continue
        other = next((b for b in builds if b.name == args.kernels_b), None) if args.kernels_b else build
        if other is None:
            raise SystemExit(f"--kernels-b {args.kernels_b!r} is not a row of the table")
        if other.cpu is not None and not cpu.supports(other.cpu):
            print(f"{other.name}: skipped, this CPU lacks {other.cpu}")
            continue
        count, differences = compare(load(args.a, build.module), load(args.b, other.module))
        label = build.name if other is build else f"{build.name} vs {other.name}"
        print(f"{label}: {count} calls compared, {len(differences)} differ")
        for line in differences[:50]:
            print("   ", line)
        failed |= bool(differences)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
