"""Fixtures shared by every test folder; the small models and data themselves are in ``helpers/small_nets.py``."""

from __future__ import annotations

import pytest
import torch
from small_nets import SmallNet


@pytest.fixture
def net64() -> SmallNet:
    torch.manual_seed(0)
    return SmallNet().double()
