"""softmaxloss.torch against PyTorch's own cross-entropy: values, autograd gradients,
gradcheck, a training run, errors (tests/test_torch_op.py: the op under torch.compile,
torch.func, forward AD, double backward, opcheck and PyTorch's own test samples). Skips without torch; never imported by softmaxloss."""

import copy
import itertools

import numpy as np
import pytest
from _helpers import random_probabilities, random_targets

import softmaxloss as sml

torch = pytest.importorskip("torch")
smt = pytest.importorskip("softmaxloss.torch")
F = torch.nn.functional

DTYPES = [torch.float32, torch.float64]
# (rtol, atol relative to the largest value): torch's float32 kernel and ours round
# differently (torch forms p - 1 in float32 where p -> 1); float64 agrees to rounding.
TOL = {torch.float32: (2e-5, 2e-6), torch.float64: (1e-12, 1e-13),
       torch.float16: (2e-3, 2e-3), torch.bfloat16: (1e-2, 1e-2)}

OPTIONS = list(
    itertools.product(
        ["index", "index-ignored", "index-ignore-3", "probabilities"],
        [False, True],  # class weights
        [0.0, 0.2],  # label smoothing
        ["none", "mean", "sum"],
    )
)


def assert_tensor_close(actual, expected, what=""):
    assert actual.dtype == expected.dtype, what
    assert actual.shape == expected.shape, what
    rtol, atol = TOL[expected.dtype]
    scale = expected.detach().abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * max(scale, 1e-30),
                               equal_nan=True, msg=what)


def make_case(rng, shape, kind, weighted, dtype):
    x = torch.tensor(rng.standard_normal(shape) * 3, dtype=dtype)
    ignore_index = 3 if kind == "index-ignore-3" else -100
    if kind == "probabilities":
        target = torch.tensor(random_probabilities(rng, shape, 1), dtype=dtype)
    else:
        target = torch.from_numpy(random_targets(rng, shape, 1, n_ignored=3 if kind == "index-ignored" else 0))
    weight = torch.tensor(rng.uniform(0.2, 3.0, shape[1]), dtype=dtype) if weighted else None
    return x, target, weight, ignore_index


def loss_and_grad(function, x, target, grad_output=None, **options):
    logits = x.detach().clone().requires_grad_(True)
    loss = function(logits, target, **options)
    loss.backward(grad_output)
    return loss.detach(), logits.grad


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(37, 11), (3, 7, 4, 5)], ids=["2d", "4d"])
@pytest.mark.parametrize("kind,weighted,smoothing,reduction", OPTIONS)
def test_matches_torch_cross_entropy_and_autograd(rng, dtype, shape, kind, weighted, smoothing, reduction):
    """Every option of torch's loss, on (N, C) and (N, C, d1, d2): the loss and the
    gradient autograd delivers to the logits (for 'none', of a random weighting of
    the per-row losses, so that backward's per-row scaling is tested)."""
    x, target, weight, ignore_index = make_case(rng, shape, kind, weighted, dtype)
    options = dict(weight=weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=smoothing)
    if kind == "probabilities":
        del options["ignore_index"]
    grad_output = None
    if reduction == "none":
        row_shape = shape[:1] + shape[2:]
        grad_output = torch.tensor(rng.uniform(-2, 2, row_shape), dtype=dtype)
    expected = loss_and_grad(F.cross_entropy, x, target, grad_output, **options)
    actual = loss_and_grad(smt.cross_entropy, x, target, grad_output, **options)
    assert_tensor_close(actual[0], expected[0], "loss")
    assert_tensor_close(actual[1], expected[1], "grad")
    # the module, and the loss-only path (no grad needed)
    module = smt.CrossEntropyLoss(**options)
    assert_tensor_close(module(x, target), expected[0], "module")
    with torch.no_grad():
        assert_tensor_close(smt.cross_entropy(x, target, **options), expected[0], "no_grad")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_unbatched_and_non_contiguous_inputs(rng, dtype):
    """(C,) with a scalar target, a transposed (non-contiguous) (N, C) and a
    channels-last (N, C, H, W) input: as torch."""
    x1 = torch.tensor(rng.standard_normal(6), dtype=dtype)
    for reduction in ("mean", "none"):
        expected = loss_and_grad(F.cross_entropy, x1, torch.tensor(4), reduction=reduction)
        actual = loss_and_grad(smt.cross_entropy, x1, torch.tensor(4), reduction=reduction)
        assert_tensor_close(actual[0], expected[0], "unbatched loss")
        assert_tensor_close(actual[1], expected[1], "unbatched grad")
    xt = torch.tensor(rng.standard_normal((9, 20)), dtype=dtype).t()
    x4 = torch.tensor(rng.standard_normal((2, 5, 3, 4)), dtype=dtype).to(memory_format=torch.channels_last)
    for x in (xt, x4):
        assert not x.is_contiguous()
        target = torch.from_numpy(random_targets(rng, tuple(x.shape), 1))
        expected_loss = F.cross_entropy(x, target, label_smoothing=0.1)
        logits = x.detach().requires_grad_(True)
        loss = smt.cross_entropy(logits, target, label_smoothing=0.1)
        loss.backward()
        ref = x.detach().clone().requires_grad_(True)
        F.cross_entropy(ref, target, label_smoothing=0.1).backward()
        assert_tensor_close(loss.detach(), expected_loss, "non-contiguous loss")
        assert_tensor_close(logits.grad, ref.grad, "non-contiguous grad")


def test_backward_scales_the_saved_gradient(rng):
    """backward multiplies by grad_output: 3 * loss, and a loss used twice."""
    x, target, weight, _ = make_case(rng, (10, 4), "index", True, torch.float64)
    logits = x.clone().requires_grad_(True)
    (3.0 * smt.cross_entropy(logits, target, weight=weight)).backward()
    ref = x.clone().requires_grad_(True)
    (3.0 * F.cross_entropy(ref, target, weight=weight)).backward()
    assert_tensor_close(logits.grad, ref.grad)
    logits.grad = ref.grad = None
    loss = smt.cross_entropy(logits, target)
    (loss + 2 * loss).backward()
    ref_loss = F.cross_entropy(ref, target)
    (ref_loss + 2 * ref_loss).backward()
    assert_tensor_close(logits.grad, ref.grad)


def test_backward_twice_with_retain_graph_on_a_leaf(rng):
    """The saved gradient is handed to autograd without a copy when grad_output is 1:
    accumulating twice into a leaf's .grad must not corrupt it."""
    x, target, _, _ = make_case(rng, (6, 5), "index", False, torch.float64)
    logits = x.clone().requires_grad_(True)
    loss = smt.cross_entropy(logits, target)
    for _ in range(3):
        loss.backward(retain_graph=True)
    ref = x.clone().requires_grad_(True)
    F.cross_entropy(ref, target).backward()
    assert_tensor_close(logits.grad, 3 * ref.grad)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"reduction": "sum", "label_smoothing": 0.3},
        {"reduction": "none", "weight": "w"},
        {"ignore_index": 2, "weight": "w", "label_smoothing": 0.1},
        {"z_loss": 0.01},
        {"probabilities": True, "weight": "w", "label_smoothing": 0.2},
    ],
    ids=["mean", "sum-smooth", "none-weight", "ignore-weight-smooth", "z-loss", "probabilities"],
)
def test_gradcheck_float64(rng, options):
    options = dict(options)
    shape = (5, 4, 3)
    x = torch.tensor(rng.standard_normal(shape), dtype=torch.float64, requires_grad=True)
    if options.pop("probabilities", False):
        target = torch.tensor(random_probabilities(rng, shape, 1))
    else:
        target = torch.from_numpy(random_targets(rng, shape, 1))
    if options.get("weight") == "w":
        options["weight"] = torch.tensor(rng.uniform(0.5, 2.0, shape[1]))
    assert torch.autograd.gradcheck(lambda logits: smt.cross_entropy(logits, target, **options), (x,))


def test_extras_match_the_numpy_facade(rng):
    """z_loss and sample_weight (softmaxloss's, not torch's) give the facade's values."""
    x = rng.standard_normal((3, 6, 5))
    target = random_targets(rng, x.shape, 1, n_ignored=2)
    sample_weight = rng.uniform(0, 2, (3, 5))
    options = dict(z_loss=0.02, label_smoothing=0.1, weight=rng.uniform(0.5, 2, 6))
    expected_loss, expected_grad = sml.cross_entropy_with_grad(
        x, target, axis=1, sample_weight=sample_weight, **options
    )
    logits = torch.tensor(x, requires_grad=True)
    loss = smt.cross_entropy(logits, torch.from_numpy(target), weight=torch.tensor(options["weight"]),
                             z_loss=0.02, label_smoothing=0.1, sample_weight=torch.tensor(sample_weight))
    loss.backward()
    np.testing.assert_array_equal(loss.detach().numpy(), expected_loss)
    np.testing.assert_array_equal(logits.grad.numpy(), expected_grad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_is_computed_in_float32(rng, dtype):
    """float16/bfloat16: computed in float32, loss and gradient in the input's dtype."""
    x = torch.tensor(rng.standard_normal((16, 7)), dtype=dtype)
    target = torch.from_numpy(random_targets(rng, (16, 7), 1))
    ref = x.float().requires_grad_(True)
    F.cross_entropy(ref, target, label_smoothing=0.1).backward()
    logits = x.clone().requires_grad_(True)
    loss = smt.cross_entropy(logits, target, label_smoothing=0.1)
    loss.backward()
    assert loss.dtype == dtype and logits.grad.dtype == dtype
    expected_loss = F.cross_entropy(ref.detach(), target, label_smoothing=0.1).to(dtype)
    assert_tensor_close(loss.detach(), expected_loss, "loss")
    assert_tensor_close(logits.grad, ref.grad.to(dtype), "grad")


def test_inplace_grad_writes_the_gradient_into_the_logits(rng):
    """inplace_grad=True: the logits' storage receives the gradient (the kernel works
    on a zero-copy view of the tensor) and the model's gradients are unchanged."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 5).double()
    x = torch.tensor(rng.standard_normal((12, 8)))
    target = torch.from_numpy(random_targets(rng, (12, 5), 1))
    ref = copy.deepcopy(model)
    F.cross_entropy(ref(x), target).backward()

    logits = model(x)
    before = logits.detach().clone()
    loss = smt.cross_entropy(logits, target, inplace_grad=True)
    expected_loss, expected_grad = sml.cross_entropy_with_grad(before.numpy(), target.numpy())
    np.testing.assert_array_equal(logits.detach().numpy(), expected_grad)  # overwritten
    np.testing.assert_array_equal(loss.detach().numpy(), expected_loss)
    loss.backward()
    for p, q in zip(model.parameters(), ref.parameters()):
        assert_tensor_close(p.grad, q.grad)

    # without inplace_grad the logits are left alone
    logits = model(x)
    before = logits.detach().clone()
    smt.cross_entropy(logits, target).backward()
    assert torch.equal(logits.detach(), before)


def test_inplace_grad_over_logits_another_node_saved_fails_loudly(rng):
    x = torch.tensor(rng.standard_normal((4, 3)), requires_grad=True)
    target = torch.tensor([0, 1, 2, 0])
    logits = torch.exp(x)  # exp saves its output for backward
    loss = smt.cross_entropy(logits, target, inplace_grad=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    with pytest.raises(RuntimeError, match="a leaf Variable that requires grad"):  # as x.mul_(2)
        smt.cross_entropy(x, target, inplace_grad=True)


def test_double_backward_is_torchs_and_refused_with_inplace_grad(rng):
    """create_graph=True: the gradient of a gradient (a gradient penalty) is PyTorch's;
    with inplace_grad=True (first order only) it is a RuntimeError saying so."""
    x = torch.tensor(rng.standard_normal((4, 3)))
    target = torch.tensor([0, 1, 2, 0])
    grads = []
    for loss_function in (F.cross_entropy, smt.cross_entropy):
        logits = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss_function(logits, target, label_smoothing=0.1), logits, create_graph=True)
        (penalty,) = torch.autograd.grad(g.square().sum(), logits)
        grads.append(penalty)
    assert_tensor_close(grads[1], grads[0])
    logits = x.clone().requires_grad_(True)
    loss = smt.cross_entropy(logits * 1, target, inplace_grad=True)
    with pytest.raises(RuntimeError, match="double backward.*inplace_grad=False"):
        torch.autograd.grad(loss, logits, create_graph=True)


def test_errors():
    x = torch.zeros(4, 3, requires_grad=True)
    target = torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="CPU.*device 'meta'"):
        smt.cross_entropy(torch.zeros(4, 3, device="meta"), target)
    with pytest.raises(ValueError, match="device 'meta'"):
        smt.cross_entropy(x, target.to("meta"))
    with pytest.raises(TypeError, match="dtype torch.int64"):
        smt.cross_entropy(torch.zeros(4, 3, dtype=torch.int64), target)
    with pytest.raises(TypeError, match="dtype torch.complex64"):
        smt.cross_entropy(torch.zeros(4, 3, dtype=torch.complex64), target)
    with pytest.raises(TypeError, match="target has dtype torch.bool"):
        smt.cross_entropy(x, target > 0)
    with pytest.raises(ValueError, match="out of range"):
        smt.cross_entropy(x, torch.tensor([0, 1, 7, 0]))
    with pytest.raises(ValueError, match="reduction must be one of"):
        smt.CrossEntropyLoss(reduction="avg")
    with pytest.raises(ValueError, match=r"target of class indices has shape \(3,\)"):
        smt.cross_entropy(x, target[:3])


def test_module_is_a_drop_in_for_nn_cross_entropy_loss(rng):
    weight = torch.tensor([1.0, 2.0, 0.5])
    module = smt.CrossEntropyLoss(weight=weight, label_smoothing=0.1)
    assert "weight" in module.state_dict()
    assert "label_smoothing=0.1" in repr(module)
    x = torch.tensor(rng.standard_normal((6, 3)), dtype=torch.float32)
    target = torch.tensor([0, 1, 2, 2, 1, 0])
    expected = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=0.1)(x, target)
    assert_tensor_close(module(x, target), expected)
    expected64 = torch.nn.CrossEntropyLoss(weight=weight.double(), label_smoothing=0.1)(x.double(), target)
    assert_tensor_close(module.double()(x.double(), target), expected64, "after .double()")


def train_curve(model, loss_function, x, y, steps):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    curve = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_function(model(x), y)
        loss.backward()
        optimizer.step()
        curve.append(loss.item())
    return np.array(curve)


@pytest.fixture
def one_torch_thread():
    """One thread for both losses: a training loop of tiny steps is at the mercy of
    thread wake-ups on a loaded 2-core machine, and this test is about values."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_training_an_mlp_follows_the_same_loss_curve(one_torch_thread):
    """A two-layer MLP on scikit-learn's digits, 300 full-batch SGD steps, from the same
    initial weights: the loss curves with torch's loss and with softmaxloss's agree."""
    datasets = pytest.importorskip("sklearn.datasets")
    features, labels = datasets.load_digits(return_X_y=True)
    x = torch.tensor(features / 16.0, dtype=torch.float32)
    y = torch.from_numpy(labels)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    twin = copy.deepcopy(model)
    expected = train_curve(model, torch.nn.CrossEntropyLoss(label_smoothing=0.05), x, y, 300)
    actual = train_curve(twin, smt.CrossEntropyLoss(label_smoothing=0.05), x, y, 300)
    assert expected[-1] < 0.3 * expected[0]  # it did learn
    np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-4)
