"""Chapter 6's layers on CUDA (issue 28: "on CPU and CUDA"): the conv-pool Function's outputs and gradients, the fused
step of a network of layers and a Lightning run of one equal the same on the CPU, in float64. Skipped without a CUDA
device; ``benchmarks/cuda_check.sh`` runs them where there is one."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import DATA_DIR

from torch_manualbp.functional import conv_pool
from torch_manualbp.layer_spec import LayerNetwork
from torch_manualbp.lightning import ManualBPClassifier, MNISTDataModule
from torch_manualbp.sequential_engine import SequentialSGD

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
LAYERS = [{"conv_pool": [4, 5, 2], "activation": "relu"}, {"fully_connected": 20}, {"softmax": 10}]


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu", "linear"])
def test_conv_pool_on_cuda_gives_the_cpus_outputs_and_gradients_float64(activation):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 12, 12, dtype=torch.float64, generator=g)
    weight = torch.randn(4, 2, 5, 5, dtype=torch.float64, generator=g)
    bias = torch.randn(4, dtype=torch.float64, generator=g)
    results = []
    for device in ("cpu", "cuda"):
        leaves = [t.to(device).requires_grad_() for t in (x, weight, bias)]
        a = conv_pool(*leaves, pool_size=2, activation=activation)
        grads = torch.autograd.grad((a * a.detach().cos()).sum(), leaves)  # a cost whose ∂C/∂a is not all ones
        results.append([t.detach().cpu() for t in (a, *grads)])
    for cpu, cuda in zip(*results):
        torch.testing.assert_close(cuda, cpu, rtol=1e-10, atol=1e-12)


@pytest.mark.cuda
@needs_cuda
def test_the_fused_step_of_a_network_of_layers_on_cuda_makes_the_cpus_updates_float64():
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(40, 784, dtype=torch.float64, generator=g), torch.randint(0, 10, (40,), generator=g)
    torch.manual_seed(0)
    cpu = LayerNetwork(LAYERS, dtype=torch.float64)
    cuda = LayerNetwork(LAYERS, dtype=torch.float64).to("cuda")
    cuda.load_state_dict(cpu.state_dict())
    cpu_costs = SequentialSGD(cpu, 10, lmbda=1.0, n=1000).run(x, y, eta=0.1)
    cuda_costs = SequentialSGD(cuda, 10, lmbda=1.0, n=1000).run(x.cuda(), y.cuda(), eta=0.1)
    torch.testing.assert_close(cuda_costs.cpu(), cpu_costs, rtol=1e-10, atol=1e-12)
    for name, p in cpu.state_dict().items():
        torch.testing.assert_close(cuda.state_dict()[name].cpu(), p, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_lightning_run_of_layers_on_cuda_equals_the_same_run_on_the_cpu_float64(tmp_path):
    weights = []
    for accelerator in ("cpu", "gpu"):
        torch.manual_seed(0)
        model = ManualBPClassifier(layers=LAYERS, cost="log_likelihood", eta=0.1, mini_batch_size=10)
        trainer = L.Trainer(
            accelerator=accelerator, devices=1, max_steps=3, precision="64-true", limit_val_batches=0,
            logger=False, enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path,
        )  # fmt: skip
        trainer.fit(model, MNISTDataModule(data_dir=str(DATA_DIR), batch_size=100, train_size=1000))
        assert (trainer.global_step, model.updates, model.fused) == (3, 30, True)
        weights.append({name: p.detach().cpu() for name, p in model.state_dict().items()})
    for name, p in weights[0].items():
        torch.testing.assert_close(weights[1][name], p, rtol=1e-9, atol=1e-11, msg=name)
