"""Every documented bad input raises a ValueError or TypeError that names the argument."""

import pytest
import torch

from torch_manualbp import Network
from torch_manualbp.functional import quadratic_cost, sigmoid_linear
from torch_manualbp.nn import QuadraticCost, SigmoidLinear

x = torch.randn(4, 3)
w = torch.randn(2, 3)
b = torch.randn(2)
a = torch.rand(4, 2)

CASES = [
    # (id, call, error type, words the message must contain)
    ("x not a tensor", lambda: sigmoid_linear([[1.0, 2.0, 3.0]], w, b), TypeError, ["x", "torch.Tensor"]),
    ("x integer", lambda: sigmoid_linear(torch.ones(4, 3, dtype=torch.long), w, b), TypeError, ["x", "floating"]),
    ("x bool", lambda: sigmoid_linear(torch.ones(4, 3, dtype=torch.bool), w, b), TypeError, ["x", "floating"]),
    ("x complex", lambda: sigmoid_linear(torch.ones(4, 3, dtype=torch.cfloat), w, b), TypeError, ["x", "floating"]),
    ("x 0-d", lambda: sigmoid_linear(torch.tensor(1.0), w, b), ValueError, ["x", "in_features=3"]),
    ("x wrong features", lambda: sigmoid_linear(torch.randn(4, 5), w, b), ValueError, ["x", "in_features=3", "(4, 5)"]),
    ("weight 1-d", lambda: sigmoid_linear(x, torch.randn(3), b), ValueError, ["weight", "2-D"]),
    ("bias wrong shape", lambda: sigmoid_linear(x, w, torch.randn(3)), ValueError, ["bias", "(2,)"]),
    ("x float64, weight float32", lambda: sigmoid_linear(x.double(), w, b), TypeError, ["x", "dtype", "torch.float32"]),
    ("bias float64", lambda: sigmoid_linear(x, w, b.double()), TypeError, ["bias", "dtype"]),
    ("x on another device", lambda: sigmoid_linear(x.to("meta"), w, b), ValueError, ["x", "same device", "meta"]),
    ("cost y on another device", lambda: quadratic_cost(a, a.to("meta")), ValueError, ["y", "same device", "meta"]),
    ("cost a integer", lambda: quadratic_cost(torch.ones(4, 2, dtype=torch.long), a), TypeError, ["a", "floating"]),
    ("cost a 0-d", lambda: quadratic_cost(torch.tensor(0.5), torch.tensor(1.0)), ValueError, ["a", "(*, K)"]),
    ("cost y not a tensor", lambda: quadratic_cost(a, [0, 1, 1, 0]), TypeError, ["y", "torch.Tensor"]),
    ("cost y wrong shape", lambda: quadratic_cost(a, torch.rand(4, 3)), ValueError, ["y", "(4, 2)", "(4, 3)"]),
    ("cost y wrong dtype", lambda: quadratic_cost(a, torch.rand(4, 2, dtype=torch.float64)), TypeError, ["y", "dtype"]),
    (
        "cost labels wrong shape",
        lambda: quadratic_cost(a, torch.tensor([0, 1])),
        ValueError,
        ["labels", "(4,)", "(2,)"],
    ),
    (
        "cost label too large",
        lambda: quadratic_cost(a, torch.tensor([0, 1, 2, 1])),
        ValueError,
        ["labels", "0..1", "[2]"],
    ),
    (
        "cost label negative",
        lambda: quadratic_cost(a, torch.tensor([0, -1, 1, 1])),
        ValueError,
        ["labels", "0..1", "[-1]"],
    ),
    ("cost bool y", lambda: quadratic_cost(a, torch.ones(4, dtype=torch.bool)), TypeError, ["y", "torch.bool"]),
    ("cost unknown reduction", lambda: quadratic_cost(a, a, "average"), ValueError, ["reduction", "'average'"]),
    (
        "cost mean of nothing",
        lambda: quadratic_cost(torch.rand(0, 2), torch.rand(0, 2)),
        ValueError,
        ["mean", "zero examples"],
    ),
    ("module bad reduction", lambda: QuadraticCost("avg"), ValueError, ["reduction"]),
    ("module zero features", lambda: SigmoidLinear(0, 3), ValueError, ["in_features", "positive"]),
    ("module float features", lambda: SigmoidLinear(3.0, 3), TypeError, ["in_features", "int"]),
    ("module unknown init", lambda: SigmoidLinear(3, 3, init="xavier"), ValueError, ["init", "'xavier'"]),
    ("module integer dtype", lambda: SigmoidLinear(3, 3, dtype=torch.long), TypeError, ["dtype", "floating"]),
    ("network one layer", lambda: Network([784]), ValueError, ["sizes", "at least two"]),
    ("network string", lambda: Network("784,30,10"), ValueError, ["sizes"]),
    ("network negative size", lambda: Network([784, -30, 10]), ValueError, ["out_features", "-30"]),
    (
        "backprop wrong width",
        lambda: Network([3, 2]).backprop(torch.rand(4, 5), torch.tensor([0, 1, 0, 1])),
        ValueError,
        ["x", "(N, 3)"],
    ),
    (
        "backprop empty batch",
        lambda: Network([3, 2]).backprop(torch.rand(0, 3), torch.zeros(0, dtype=torch.long)),
        ValueError,
        ["x", "non-empty"],
    ),
    (
        "backprop wrong dtype",
        lambda: Network([3, 2]).backprop(torch.rand(4, 3).double(), torch.tensor([0, 1, 0, 1])),
        TypeError,
        ["x", "dtype"],
    ),
    (
        "backprop bad label",
        lambda: Network([3, 2]).backprop(torch.rand(4, 3), torch.tensor([0, 1, 5, 1])),
        ValueError,
        ["labels", "[5]"],
    ),
    # rows added with docs/hostile_inputs.md: every hostile input it lists that ends in an error
    ("weight not a tensor", lambda: sigmoid_linear(x, [[1.0, 2.0, 3.0]]), TypeError, ["weight", "torch.Tensor"]),
    (
        "weight integer",
        lambda: sigmoid_linear(x, torch.ones(2, 3, dtype=torch.long)),
        TypeError,
        ["weight", "floating"],
    ),
    ("weight 3-d", lambda: sigmoid_linear(x, torch.randn(1, 2, 3)), ValueError, ["weight", "2-D", "(1, 2, 3)"]),
    ("bias not a tensor", lambda: sigmoid_linear(x, w, [0.0, 0.0]), TypeError, ["bias", "torch.Tensor"]),
    ("bias integer", lambda: sigmoid_linear(x, w, torch.zeros(2, dtype=torch.long)), TypeError, ["bias", "floating"]),
    ("bias 2-d", lambda: sigmoid_linear(x, w, torch.zeros(1, 2)), ValueError, ["bias", "(2,)", "(1, 2)"]),
    ("cost a bool", lambda: quadratic_cost(torch.ones(4, 2, dtype=torch.bool), a), TypeError, ["a", "floating"]),
    ("cost a complex", lambda: quadratic_cost(torch.ones(4, 2, dtype=torch.cfloat), a), TypeError, ["a", "floating"]),
    ("cost a no outputs", lambda: quadratic_cost(torch.rand(4, 0), torch.rand(4, 0)), ValueError, ["a", "K >= 1"]),
    ("cost y complex", lambda: quadratic_cost(a, torch.ones(4, dtype=torch.cfloat)), TypeError, ["y", "complex"]),
    (
        "cost float labels",
        lambda: quadratic_cost(a, torch.tensor([0.0, 1.0, 1.0, 0.0])),
        ValueError,
        ["float target y", "(4, 2)", "(4,)"],
    ),
    (
        "cost integer one-hot",
        lambda: quadratic_cost(a, torch.ones(4, 2, dtype=torch.long)),
        ValueError,
        ["labels y", "(4,)", "(4, 2)"],
    ),
    ("network float size", lambda: Network([784, 30.0, 10]), TypeError, ["out_features", "int"]),
    ("network zero size", lambda: Network([784, 0, 10]), ValueError, ["out_features", "positive"]),
    ("module bool features", lambda: SigmoidLinear(True, 3), TypeError, ["in_features", "int"]),
    ("network wrong width", lambda: Network([3, 2])(torch.rand(4, 5)), ValueError, ["x", "in_features=3", "(4, 5)"]),
    (
        "backprop 3-d input",
        lambda: Network([3, 2]).backprop(torch.rand(2, 4, 3), torch.zeros(2, 4, dtype=torch.long)),
        ValueError,
        ["x", "(N, 3)", "(2, 4, 3)"],
    ),
    (
        "backprop 1-d input",
        lambda: Network([3, 2]).backprop(torch.rand(3), torch.tensor(0)),
        ValueError,
        ["x", "(N, 3)", "(3,)"],
    ),
    (
        "backprop on another device",
        lambda: Network([3, 2]).backprop(torch.rand(4, 3, device="meta"), torch.tensor([0, 1, 0, 1])),
        ValueError,
        ["x", "device", "meta"],
    ),
]


@pytest.mark.parametrize("call,error,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_error_naming_the_argument(call, error, words):
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_requires_grad_target_is_accepted_and_gets_its_gradient():
    y = torch.rand(4, 2, requires_grad=True)
    a_leaf = a.clone().requires_grad_()
    quadratic_cost(a_leaf, y).backward()
    torch.testing.assert_close(y.grad, -(a_leaf - y).detach() / 4)


def test_label_out_of_range_under_vmap_gives_nan_not_a_silent_zero():
    from torch.func import vmap

    costs = vmap(quadratic_cost)(a, torch.tensor([0, 1, 7, 1]))
    assert torch.isnan(costs[2]) and torch.isfinite(costs[[0, 1, 3]]).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mixed_devices_raise_a_clear_error():
    with pytest.raises(ValueError, match="weight.*device|x must be on the same device"):
        sigmoid_linear(x, w.cuda())
    with pytest.raises(ValueError, match="y must be on the same device"):
        quadratic_cost(a.cuda(), torch.tensor([0, 1, 1, 0]))
