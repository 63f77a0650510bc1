"""The names the README and the issues call public import from the package itself, as outside code imports them:
``from torch_manualbp import Population, MiniBatchSGD, Network``."""

import subprocess
import sys

from conftest import ROOT

import torch_manualbp
import torch_manualbp.network
import torch_manualbp.population
import torch_manualbp.sgd


def test_population_engine_and_network_import_from_the_package_in_a_fresh_interpreter():
    # a fresh interpreter: no earlier test has imported the submodules that would make the names reachable
    code = (
        "from torch_manualbp import Population, MiniBatchSGD, Network; "
        "print(Population.__module__, MiniBatchSGD.__module__, Network.__module__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["torch_manualbp.population", "torch_manualbp.sgd", "torch_manualbp.network"]


def test_the_package_names_are_the_classes_their_modules_define():
    from torch_manualbp import MiniBatchSGD, Network, Population

    assert Population is torch_manualbp.population.Population
    assert MiniBatchSGD is torch_manualbp.sgd.MiniBatchSGD
    assert Network is torch_manualbp.network.Network


def test_all_lists_the_public_names_and_each_of_its_names_exists():
    assert {"Population", "MiniBatchSGD", "Network"} <= set(torch_manualbp.__all__)
    missing = [name for name in torch_manualbp.__all__ if not hasattr(torch_manualbp, name)]
    assert not missing, f"__all__ names what the package lacks: {missing}"
