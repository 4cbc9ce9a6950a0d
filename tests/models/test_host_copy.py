"""``to_host``: nested tensors copied to the CPU with their structure, values, shapes and dtypes."""

import pytest
import torch

from bara_pyro.models.host_copy import to_host


def nested(device):
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(3, 4, generator=g).to(device), "b": [torch.arange(5).to(device), 7, "x"],
            "c": {"d": (torch.randn(2, generator=g).to(device).double(), torch.zeros(0, device=device)),
                  "e": torch.tensor(2.5, device=device)}}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_structure_values_and_own_storage(device):
    obj = nested(device)
    out = to_host(obj)
    assert out["b"][1:] == [7, "x"] and isinstance(out["c"]["d"], tuple)
    pairs = [(out["a"], obj["a"]), (out["b"][0], obj["b"][0]), (out["c"]["d"][0], obj["c"]["d"][0]),
             (out["c"]["d"][1], obj["c"]["d"][1]), (out["c"]["e"], obj["c"]["e"])]
    for host, orig in pairs:
        assert host.device.type == "cpu" and host.dtype == orig.dtype and host.shape == orig.shape
        assert torch.equal(host, orig.cpu())
    ptrs = [t.untyped_storage().data_ptr() for t, _ in pairs if t.numel()]
    assert len(set(ptrs)) == len(ptrs)  # no two share a storage (safetensors can save them)
