"""training.losses: the background calibration hinge, on hand-computed similarities."""

from __future__ import annotations

import pytest
import torch

from training.losses import background_calibration_loss

# texts: class 0, class 1, background (index 2)


def test_object_rows_hinge_own_over_background_over_others():
    sims = torch.tensor([[0.5, 0.1, 0.3]])  # own 0.5, other 0.1, bg 0.3
    assert background_calibration_loss(sims, torch.tensor([0]), 2, margin=0.1) == pytest.approx(0.0)
    # own margin 0.3: 0.3 + 0.3 - 0.5 = 0.1 short; bg over other: 0.1 + 0.1 - 0.3 < 0
    loss = background_calibration_loss(sims, torch.tensor([0]), 2, margin=0.1, own_margin=0.3)
    assert loss == pytest.approx(0.1)


def test_background_rows_count_only_with_a_cap():
    sims = torch.tensor([[0.0, -0.6, 0.7]])  # bg - class0 = 0.7, bg - class1 = 1.3
    target = torch.tensor([2])
    assert background_calibration_loss(sims, target, 2, margin=0.1) == pytest.approx(0.0)
    # cap 0.3: (0.7 - 0.3) and (1.3 - 0.3) over the two classes -> mean 0.7
    loss = background_calibration_loss(sims, target, 2, margin=0.1, background_cap=0.3)
    assert loss == pytest.approx(0.7)
    close = torch.tensor([[0.65, 0.5, 0.7]])  # gaps 0.05 and 0.2: below the 0.1 margin by 0.05 -> mean 0.025
    assert background_calibration_loss(close, target, 2, margin=0.1, background_cap=0.3) == pytest.approx(
        0.025
    )


def test_rows_average_over_object_and_background_parts():
    sims = torch.tensor([[0.5, 0.1, 0.3], [0.0, -0.6, 0.7]])
    loss = background_calibration_loss(sims, torch.tensor([0, 2]), 2, 0.1, own_margin=0.3, background_cap=0.3)
    assert loss == pytest.approx(0.1 + 0.7)
