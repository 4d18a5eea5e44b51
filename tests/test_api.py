"""The Python API (``stitch.api``): the user's own modules and tensors, no store, no Hydra; the same code
path as ``stitch.py`` (same fitting and evaluation, same metric names)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from stitch import api
from stitch.errors import ConfigError


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


class Small(nn.Module):
    """A user's own network: three conv blocks and a head (not from the model zoo)."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.block1 = Block(3, 8, 1)
        self.block2 = Block(8, 16, 2)
        self.block3 = Block(16, 16, 2)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.block3(self.block2(self.block1(x))).mean((2, 3)))


def _data(n_train: int = 96, n_test: int = 48):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_train + n_test, 3, 12, 12, generator=g)
    y = torch.randint(0, 4, (n_train + n_test,), generator=g)
    x[torch.arange(len(y)), y % 3] += 2.0  # a learnable signal: the class brightens one channel
    return api.tensor_data(train=(x[:n_train], y[:n_train]), test=(x[n_train:], y[n_train:]), batch_size=32)


def test_self_stitching_a_users_module_with_dm_is_exact():
    net = Small(0)
    r = api.stitch(net, net, "block2", "block2", _data(), method="dm")
    assert r["relative_acc"] == pytest.approx(1.0) and r["agreement"] == pytest.approx(1.0)
    assert r["dm_structural"] < 1e-8 and r["sim/cka"] == pytest.approx(1.0, abs=1e-5)
    assert r["layer"] == r["target_layer"] == "block2" and r["fit"]["rows"] == 96 * 6 * 6
    x = torch.randn(5, 3, 12, 12)
    torch.testing.assert_close(r["stitched"](x), net(x), rtol=1e-4, atol=1e-4)  # a working network


def test_tlm_and_dm_between_two_networks_and_an_unknown_layer_lists_the_valid_ones():
    data = _data()
    a, b = Small(0), Small(1)
    r = api.stitch(a, b, "block1", "block2", data, method="tlm", tlm={"epochs": 2, "lr": 1e-2, "batch_size": 32})
    assert r["fit"]["steps"] == 2 * 3 and 0.0 <= r["stitched_acc"] <= 1.0 and r["method"] == "tlm"
    with pytest.raises(ConfigError, match="block1, block2, block3"):
        api.stitch(a, b, "block9", "block2", data)
    with pytest.raises(ConfigError, match="tlm.epochs=0: expected"):
        api.stitch(a, b, "block1", "block2", data, method="tlm", tlm={"epochs": 0})
    with pytest.raises(ConfigError, match="method='lsq': expected dm or tlm"):
        api.stitch(a, b, "block1", "block2", data, method="lsq")


def test_a_matrix_is_a_table_with_a_row_per_run_and_the_diagonal_of_self_stitching_is_exact():
    net = Small(0)
    table = api.stitch_matrix(net, net, _data(), ["block1", "block2"], ["block1", "block2"], methods=("dm",),
                              progress=False)
    assert len(table) == 4 and set(table.columns) >= {"layer", "target_layer", "method", "relative_acc", "sim/cka"}
    diag = table[table["layer"] == table["target_layer"]]
    assert (diag["relative_acc"] - 1.0).abs().max() < 1e-6
    assert table.set_index(["layer", "target_layer"]).loc[("block1", "block2"), "fit/rows"] == 96 * 6 * 6


def test_data_from_a_dataloader_equals_data_from_tensors():
    x, y = torch.randn(20, 3, 8, 8), torch.randint(0, 3, (20,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=7)
    d = api.tensor_data(train=loader, test=(x, y))
    assert d.num_classes == 3
    torch.testing.assert_close(d.tensors("train")[0], x)
    with pytest.raises(ConfigError, match="test: 20 inputs but 3 labels"):
        api.tensor_data(train=(x, y), test=(x, y[:3]))


def test_the_example_of_docs_api_md_runs_as_written(capsys):
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    namespace: dict = {}
    exec(compile(code, "docs/api.md", "exec"), namespace)  # noqa: S102 - our own documentation
    out = capsys.readouterr().out
    assert "['stem', 'block1.0', 'block1.1', 'block2.0', 'block2.1']" in out
    table = namespace["table"]
    assert len(table) == 3 * 3 * 2 and {"sim/cka", "sim/pwcca"} <= set(table.columns)
