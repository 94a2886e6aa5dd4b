"""The registry: every architecture builds, has the documented size and trains."""

import pytest
import torch
from torch.nn import functional as F

from trainer import models
from trainer.loop import xavier_init
from trainer.preprocess import Preprocess

# docs/DESIGN.md's parameter counts, in millions (rounded to two decimals there).
DESIGN_PARAMS_M = {"lenet": 0.06, "lenet_bn": 0.04, "alexnet": 46.76, "vgg11": 43.09,
                   "nin": 1.99, "googlenet": 5.98, "resnet18": 11.18, "densenet": 0.76}
DESIGN_SIDES = {"lenet": 28, "lenet_bn": 28, "alexnet": 224, "vgg11": 224, "nin": 224,
                "googlenet": 96, "resnet18": 96, "densenet": 96}


def test_registry_holds_exactly_the_designed_architectures():
    assert list(models.ARCHITECTURES) == list(DESIGN_PARAMS_M)


@pytest.mark.parametrize("name", models.ARCHITECTURES)
def test_spec_is_complete(name):
    spec = models.get(name)
    assert spec.input_side == DESIGN_SIDES[name]
    assert set(spec.recipes) == set(models.RECIPES)
    d2l = spec.recipes["d2l"]
    assert d2l.epochs == 10 and d2l.momentum == 0 and d2l.schedule == "constant"


@pytest.mark.parametrize("name", models.ARCHITECTURES)
def test_forward_shape_and_parameter_count(name):
    net = models.build(name).eval()
    assert round(models.count_parameters(net) / 1e6, 2) == DESIGN_PARAMS_M[name]
    side = models.get(name).input_side
    with torch.no_grad():
        out = net(torch.rand(3, 1, side, side))
    assert out.shape == (3, models.NUM_CLASSES)
    assert torch.isfinite(out).all()


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(KeyError, match="resnet18"):
        models.build("resnet19")


@pytest.mark.parametrize("name", models.ARCHITECTURES)
def test_a_few_steps_lower_the_loss_on_a_small_batch(name):
    """Overfitting one small batch: the d2l recipe's SGD must make progress on it."""
    torch.manual_seed(0)
    spec = models.get(name)
    net = models.build(name)
    xavier_init(net)
    for m in net.modules():  # dropout would make single-batch losses noisy; not under test here
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    pre = Preprocess(spec.input_side)
    images = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8)
    labels = torch.arange(10)
    lr = spec.recipes["d2l"].lr
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    x = pre(images)
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(net(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = F.cross_entropy(net(x), labels).item()
    assert final < losses[0], losses + [final]
