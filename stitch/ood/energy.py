"""Energy score and the energy-bounded fine-tuning loss of Liu et al. (2020).

Liu, Wang, Owens & Li, *Energy-based Out-of-distribution Detection* (NeurIPS 2020):

* the free energy of a classifier's logits f(x) is ``E(x) = -T logsumexp(f(x) / T)``;
  in-distribution inputs get *low* energy, so ``-E(x)`` is the in-distribution score;
* fine-tuning with auxiliary outliers adds two squared hinge terms to the
  cross-entropy on in-distribution data::

      L = CE(in) + w * ( mean(relu(E_in - m_in)^2) + mean(relu(m_out - E_out)^2) )

  pushing in-distribution energies below ``m_in`` and outlier energies above
  ``m_out``. Paper 2 (Balogh & Jelasity 2025) uses w = 0.1, m_in = -25, m_out = -7
  with T = 1, which are the defaults here.

Multi-label heads (CelebA's 40 attributes) have no softmax: their score is the *joint energy* of
Wang, Liu, Bocchieri & Li (*Can multi-label classification networks know what they don't know?*,
NeurIPS 2021), ``E(x) = -sum_k log(1 + exp(f_k(x)))``, the sum of each label's own free energy;
it is a post-hoc score (no fine-tuning), so Liu et al.'s phase is skipped for multi-label detectors.
"""
from __future__ import annotations

import torch
from torch import nn

from ..settings import ENERGY_M_IN, ENERGY_M_OUT, ENERGY_WEIGHT

# paper 2 / Liu et al. 2020 (CIFAR-10) values;
# the defaults of ood.energy (stitch.settings.EnergySettings: the one place they live)
DEFAULT_WEIGHT, DEFAULT_M_IN, DEFAULT_M_OUT = ENERGY_WEIGHT, ENERGY_M_IN, ENERGY_M_OUT


def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Free energy ``-T logsumexp(logits / T)`` per sample (lower = more in-distribution)."""
    if temperature <= 0:
        raise ValueError(f"energy temperature must be positive, got {temperature}")
    logits = logits.float()  # logsumexp in half precision loses the margins (-25) the loss works with
    return -temperature * torch.logsumexp(logits / temperature, dim=1)


def joint_energy(logits: torch.Tensor) -> torch.Tensor:
    """Wang et al.'s joint energy of a multi-label head, ``-sum_k softplus(f_k)`` per sample (lower =
    more in-distribution: confident positive labels lower it, every label contributes at most 0)."""
    return -nn.functional.softplus(logits.float()).sum(1)


def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The OOD-detection score ``-E(x)``: higher means more in-distribution."""
    return -energy(logits, temperature)


def energy_regularizer(energy_in: torch.Tensor, energy_out: torch.Tensor, m_in: float = DEFAULT_M_IN,
                       m_out: float = DEFAULT_M_OUT) -> torch.Tensor:
    """The squared-hinge energy term (without its weight).

    ``mean(relu(E_in - m_in)^2) + mean(relu(m_out - E_out)^2)``: zero once every
    in-distribution energy is below ``m_in`` and every outlier energy above ``m_out``.
    """
    if not m_in < m_out:
        raise ValueError(f"energy margins need m_in < m_out (in-distribution energy is the lower one), "
                         f"got m_in={m_in}, m_out={m_out}")
    return (nn.functional.relu(energy_in - m_in).pow(2).mean()
            + nn.functional.relu(m_out - energy_out).pow(2).mean())


def energy_loss(logits_in: torch.Tensor, labels_in: torch.Tensor, logits_out: torch.Tensor,
                weight: float = DEFAULT_WEIGHT, m_in: float = DEFAULT_M_IN, m_out: float = DEFAULT_M_OUT
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """Liu et al.'s fine-tuning objective on one batch (half in-distribution, half outliers).

    Returns the loss and its parts (floats, for logging): ``ce``, ``reg``,
    ``energy_in`` and ``energy_out`` (batch means).
    """
    ce = nn.functional.cross_entropy(logits_in.float(), labels_in)
    e_in, e_out = energy(logits_in), energy(logits_out)
    reg = energy_regularizer(e_in, e_out, m_in, m_out)
    loss = ce + weight * reg
    return loss, {"ce": float(ce.detach()), "reg": float(reg.detach()), "energy_in": float(e_in.detach().mean()),
                  "energy_out": float(e_out.detach().mean())}
