"""The class-block kernels and their merge (softmaxloss._shards): any split of the classes
into blocks gives the unsplit `softmaxloss.cross_entropy_with_grad` within 2 ulp-scale, for
every option, target kind and dtype, merged as Dask merges (each block shifted by its own
max, then the online-softmax merge in a tree) or as softmaxloss.distributed does (the row
max first, then plain sums).

2 ulp-scale: |sharded - unsplit| <= 2 ulps of the result dtype times the quantity's scale
(the row's largest gradient entry; the loss itself). float64 results get the rounding of
the float64 sums too, which a split reorders (sqrt(C)/2 ulps: the unsplit kernel's own
sums of C terms are only that accurate; for float32 results it is far below an ulp).
Merged as Dask merges, a block's exponentials are exp(x_c - m_b), its own max: rounding
x_c - m_b instead of the unsplit kernel's x_c - M costs each term a relative error of up
to |x_c - m| units of roundoff u (the gap term of the kernel's own accuracy budget,
tests/test_accuracy.py). What is made of the small terms alone -- the loss of a confident,
correct row (about S - 1) and its label's gradient (1 - p_y) -- then differs relative to
itself by up to twice the row's range of logits times u: merge mode allows that too.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import softmaxloss as sml
from softmaxloss import _dispatch, _shards

from _helpers import assert_split_matches

F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)


def split_cross_entropy(x, target, bounds, mode, *, weight=None, sample_weight=None, tree=2,
                        in_place=False, n_threads=0, **options):
    """The cross-entropy of x (N, C) from the blocks [bounds[i], bounds[i + 1]) of its
    classes: (loss, grad) as softmaxloss.cross_entropy_with_grad returns them."""
    n, n_classes = x.shape
    probabilities = target.ndim == 2
    spec = _shards.make_spec(n_classes, x.dtype, probabilities, weight, options, target.dtype)
    t = target if probabilities else _shards.index_target(target, spec)
    s = _shards.sample_weights(sample_weight, n)
    blocks = list(zip(bounds[:-1], bounds[1:]))
    compute = spec.dtypes.compute

    def block_target(a, b):
        return t[:, a:b] if probabilities else t

    exps = [None] * len(blocks)
    if mode == "shift":
        top = np.max([_shards.block_max(x[:, a:b]) for a, b in blocks], axis=0)
        if in_place:
            exps = [np.array(x[:, a:b], dtype=compute) for a, b in blocks]
            stats = [_shards.block_stats(e, block_target(a, b), a, spec, shift=top, exp_out=e, n_threads=n_threads)
                     for e, (a, b) in zip(exps, blocks)]
        else:
            stats = [_shards.block_stats(x[:, a:b], block_target(a, b), a, spec, shift=top, n_threads=n_threads)
                     for a, b in blocks]
        summed = np.sum([st[:, _shards.packed_columns(spec)] for st in stats], axis=0)
        merged = _shards.unpack(top, summed, spec)
    else:
        level = [_shards.block_stats(x[:, a:b], block_target(a, b), a, spec, n_threads=n_threads) for a, b in blocks]
        while len(level) > 1:  # a tree of merges, `tree` blocks at a time
            level = [_shards.merge(np.stack(level[i : i + tree])) for i in range(0, len(level), tree)]
        merged = level[0]
    normaliser = float(_shards.row_weights(t, s, spec).sum())
    divide_by = _shards.divisor(normaliser, spec.options.reduction)
    row_loss, coefs = _shards.row_terms(merged, t, s, spec, divide_by)
    parts = []
    for e, (a, b) in zip(exps, blocks):
        if e is not None:
            parts.append(_shards.block_grad(e, block_target(a, b), a, coefs, spec, divide_by, out=e, from_exp=True,
                                            n_threads=n_threads))
        else:
            parts.append(_shards.block_grad(x[:, a:b], block_target(a, b), a, coefs, spec, divide_by,
                                            n_threads=n_threads))
    grad = np.concatenate(parts, axis=1)
    result = spec.dtypes.result
    with np.errstate(over="ignore"):
        grad = grad.astype(result)
        if spec.options.reduction == "none":
            return row_loss.astype(result), grad
        return result.type(_shards.reduced(math.fsum(row_loss), normaliser, spec.options.reduction)), grad


def random_splits(rng, n_classes, count=3):
    """Single block, every class its own block (small C), and random splits with uneven
    widths, width-1 blocks included."""
    splits = [[0, n_classes], [0, 1, n_classes], [0, n_classes - 1, n_classes]]
    if n_classes <= 40:
        splits.append(list(range(n_classes + 1)))
    for _ in range(count):
        cuts = rng.choice(np.arange(1, n_classes), size=min(n_classes - 1, int(rng.integers(1, 9))), replace=False)
        splits.append([0, *sorted(int(c) for c in cuts), n_classes])
    return splits


N_ROWS, N_CLASSES = 37, 53

# (name, keywords, probability targets): every option and its combinations that interact
# in the formula: class weights with ignored rows, smoothing (also 1), z-loss, sample weights.
CASES = [
    ("plain", {}, False),
    ("ignored", dict(ignore_index=-100), False),
    ("weight+ignored", dict(weight="w"), False),
    ("smoothing", dict(label_smoothing=0.1), False),
    ("weight+smoothing+ignored", dict(weight="w", label_smoothing=0.3), False),
    ("smoothing=1+weight", dict(weight="w", label_smoothing=1.0), False),
    ("z_loss+sample_weight", dict(z_loss=1e-2, sample_weight="s"), False),
    ("everything+sum", dict(weight="w", sample_weight="s", label_smoothing=0.2, z_loss=1e-3, reduction="sum"), False),
    ("everything+none", dict(weight="w", sample_weight="s", label_smoothing=0.2, z_loss=1e-3, reduction="none"), False),
    ("ignore_index=2 (a class)", dict(ignore_index=2, weight="w"), False),
    ("probs", {}, True),
    ("probs+weight+smoothing", dict(weight="w", label_smoothing=0.25), True),
    ("probs+z+sample_weight+none", dict(z_loss=1e-2, sample_weight="s", reduction="none"), True),
    ("probs+smoothing=1+sum", dict(label_smoothing=1.0, reduction="sum", weight="w"), True),
]


def make_case(rng, dtype, options, probabilities, n_rows=N_ROWS, n_classes=N_CLASSES):
    x = (rng.standard_normal((n_rows, n_classes)) * 4).astype(dtype)
    keywords = dict(options)
    ignore_index = keywords.get("ignore_index", -100)
    if probabilities:
        target = rng.dirichlet(np.full(n_classes, 0.3), size=n_rows)
    else:
        target = rng.integers(0, n_classes, n_rows)
        target[::5] = ignore_index
        target[1] = int(np.argmax(x[1]))  # a confident, correct row: its loss ~ S - 1
        x[1, target[1]] += 30
    if keywords.get("weight") == "w":
        keywords["weight"] = rng.uniform(0.2, 3.0, n_classes)
    if keywords.get("sample_weight") == "s":
        keywords["sample_weight"] = rng.uniform(0.0, 2.0, n_rows)
    return x, target, keywords


@pytest.mark.parametrize("dtype", [F32, F64, F16], ids=str)
@pytest.mark.parametrize("mode", ["merge", "shift"])
@pytest.mark.parametrize("name, options, probabilities", CASES, ids=[c[0] for c in CASES])
def test_any_split_gives_the_unsplit_result(rng, dtype, mode, name, options, probabilities):
    x, target, keywords = make_case(rng, dtype, options, probabilities)
    expected = sml.cross_entropy_with_grad(x, target, **keywords)
    for bounds in random_splits(rng, N_CLASSES):
        actual = split_cross_entropy(x, target, bounds, mode, **keywords)
        assert_split_matches(actual, expected, dtype, N_CLASSES, f"{name} {mode} {bounds}",
                             logits=x if mode == "merge" else None)


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("tree", [2, 3, 64])
def test_merge_tree_shape_does_not_matter(rng, dtype, tree):
    """The merge is associative: pairs, triples or all blocks at once (many blocks)."""
    x, target, keywords = make_case(rng, dtype, dict(weight="w", label_smoothing=0.1, z_loss=1e-3), False,
                                    n_classes=300)
    expected = sml.cross_entropy_with_grad(x, target, **keywords)
    bounds = list(range(0, 300, 7)) + [300]
    assert_split_matches(split_cross_entropy(x, target, bounds, "merge", tree=tree, **keywords), expected,
                         dtype, 300, f"tree {tree}", logits=x)


def test_shifted_sums_are_the_merge_of_equal_maxima(rng):
    """With every block shifted by the row max, `merge` is the plain sum of the packed
    columns: the one merge, which an all-reduce computes."""
    x, target, keywords = make_case(rng, F64, dict(weight="w", label_smoothing=0.2), False)
    spec = _shards.make_spec(N_CLASSES, x.dtype, False, keywords["weight"], dict(label_smoothing=0.2))
    t = _shards.index_target(target, spec)
    top = _shards.block_max(x)
    stats = np.stack([_shards.block_stats(x[:, a:b], t, a, spec, shift=top) for a, b in [(0, 10), (10, 11), (11, 53)]])
    merged = _shards.merge(stats)
    columns = _shards.packed_columns(spec)
    np.testing.assert_array_equal(merged[:, columns], stats[:, :, columns].sum(axis=0))
    np.testing.assert_array_equal(_shards.unpack(top, stats[:, :, columns].sum(axis=0), spec)[:, columns],
                                  merged[:, columns])


@pytest.mark.parametrize("mode", ["merge", "shift"])
@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_hostile_rows(dtype, mode):
    """-inf blocks, a row of all -inf, NaN and +inf, huge and tiny logits: the unsplit
    kernel's NaN, infinities and values, with smoothing and weights (-l_c = +inf terms)."""
    rng = np.random.default_rng(5)
    n_classes = 12
    x = rng.standard_normal((10, n_classes)).astype(dtype)
    x[0, :6] = -np.inf                # a whole block of -inf
    x[1, :] = -np.inf                 # all -inf: NaN
    x[2, 7] = np.nan
    x[3, 3] = np.inf
    x[4] *= float(np.finfo(dtype).max) / 8  # huge, overflowing gaps
    x[5] = 0.0                        # ties everywhere
    x[6, 6:] = -np.inf
    x[7] = np.finfo(dtype).tiny       # subnormal-size gaps
    target = np.array([8, 0, 1, 2, 3, 4, 0, 5, 9, -100])
    for keywords in [{}, dict(label_smoothing=0.2), dict(weight=rng.uniform(0.5, 2, n_classes), z_loss=1e-3),
                     dict(label_smoothing=0.5, reduction="none")]:
        with np.errstate(all="ignore"):
            expected = sml.cross_entropy_with_grad(x, target, **keywords)
            for bounds in [[0, 6, 12], [0, 3, 6, 7, 12], [0, 12]]:
                actual = split_cross_entropy(x, target, bounds, mode, **keywords)
                assert_split_matches(actual, expected, dtype, n_classes, f"{keywords} {bounds}",
                                     logits=x if mode == "merge" else None)


def test_tiny_normaliser_divides_last(rng):
    """A mean over rows of subnormal weight (1/W overflows): the divided-last path, as unsplit."""
    x, target, _ = make_case(rng, F64, {}, False)
    weight = np.full(N_CLASSES, 1e-310)
    expected = sml.cross_entropy_with_grad(x, target, weight=weight, label_smoothing=0.1)
    for bounds in random_splits(rng, N_CLASSES, 2):
        assert_split_matches(split_cross_entropy(x, target, bounds, "shift", weight=weight, label_smoothing=0.1),
                             expected, F64, N_CLASSES, str(bounds))


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_in_place_exponentials_and_strided_blocks(rng, dtype):
    """exp_out over the block itself then the gradient in place (softmaxloss.distributed's
    path), and blocks that are strided views of a Fortran-ordered array."""
    x, target, keywords = make_case(rng, dtype, dict(weight="w", label_smoothing=0.1, z_loss=1e-3), False)
    expected = sml.cross_entropy_with_grad(x, target, **keywords)
    bounds = [0, 5, 6, 30, 53]
    assert_split_matches(split_cross_entropy(x, target, bounds, "shift", in_place=True, **keywords), expected,
                         dtype, N_CLASSES, "in place")
    fortran = np.asfortranarray(x)
    assert_split_matches(split_cross_entropy(fortran, target, bounds, "merge", **keywords), expected, dtype,
                         N_CLASSES, "Fortran", logits=x)
    p = rng.dirichlet(np.ones(N_CLASSES), N_ROWS)
    assert_split_matches(split_cross_entropy(fortran, np.asfortranarray(p), bounds, "shift", in_place=True),
                         sml.cross_entropy_with_grad(x, p), dtype, N_CLASSES, "probabilities, in place")


def test_bitwise_identical_for_every_thread_count(rng):
    x, target, keywords = make_case(rng, F32, dict(weight="w", label_smoothing=0.1), False, n_rows=600, n_classes=400)
    bounds = [0, 150, 151, 400]
    first = {}
    for build in sorted(_dispatch.available):
        with _dispatch.use(build):
            for threads in (1, 2, 3):
                for mode in ("merge", "shift"):
                    loss, grad = split_cross_entropy(x, target, bounds, mode, n_threads=threads, **keywords)
                    if (build, mode) not in first:
                        first[build, mode] = (loss, grad)
                    else:
                        assert loss == first[build, mode][0], (build, threads, mode)
                        np.testing.assert_array_equal(grad, first[build, mode][1], err_msg=f"{build} {threads} {mode}")


def test_kernels_refuse_inconsistent_shapes():
    """A direct caller with shapes the Python layer would never send gets an error, not a
    read past an array."""
    kernels = _dispatch.kernels
    x = np.zeros((4, 1, 6))
    t = np.zeros((4, 1), np.int64)
    with pytest.raises(ValueError, match="stats"):
        kernels.class_block_stats_index(x, t, 0, None, False, None, np.zeros((4, 1, 5)), None, 0)
    with pytest.raises(ValueError, match="weight"):
        kernels.class_block_stats_index(x, t, 0, np.ones(5), False, None, np.zeros((4, 1, 6)), None, 0)
    with pytest.raises(ValueError, match="exp_out needs a shift"):
        kernels.class_block_stats_index(x, t, 0, None, False, None, np.zeros((4, 1, 6)), np.zeros((4, 1, 6)), 0)
    with pytest.raises(ValueError, match="coefs"):
        kernels.class_block_grad_index(x, t, 0, -100, None, np.zeros((4, 1, 9)), False, 0.0, 6, 6.0, 0.0, 1.0,
                                       np.zeros((4, 1, 6)), 0)
    with pytest.raises(ValueError, match="grad"):
        kernels.class_block_grad_probs(x, x, None, np.zeros((4, 1, 10)), False, 0.0, 6, 1.0, np.zeros((4, 1, 5)), 0)


def test_out_of_range_classes_are_refused_with_the_facades_message():
    spec = _shards.make_spec(5, F32, False, None, {})
    with pytest.raises(ValueError, match=r"target value 7 at position \(1,\) is out of range for 5 classes"):
        _shards.index_target(np.array([0, 7]), spec)
    with pytest.raises(ValueError, match="weight must have one entry per class"):
        _shards.make_spec(5, F32, False, np.ones(4), {})
    with pytest.raises(ValueError, match="label_smoothing"):
        _shards.make_spec(5, F32, False, None, dict(label_smoothing=2.0))
