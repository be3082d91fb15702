"""The mesh spec parser and `make_mesh`: good specs, the -1 wildcard, and one-line errors for bad ones."""

from __future__ import annotations

import jax
import pytest

from musicgpt_jax import sharding
from musicgpt_jax.sharding import MeshError, make_mesh, parse_mesh


@pytest.mark.parametrize(
    ("spec", "devices", "expected"),
    [
        ("", 8, {"data": 1, "fsdp": 8, "tensor": 1}),
        ("data=2,fsdp=2,tensor=2", 8, {"data": 2, "fsdp": 2, "tensor": 2}),
        ("data=8", 8, {"data": 8, "fsdp": 1, "tensor": 1}),
        (" tensor=2 , fsdp=4", 8, {"data": 1, "fsdp": 4, "tensor": 2}),
        ("data=2,fsdp=-1", 8, {"data": 2, "fsdp": 4, "tensor": 1}),
        ("tensor=-1,data=4", 8, {"data": 4, "fsdp": 1, "tensor": 2}),
        ("data=-1", 1, {"data": 1, "fsdp": 1, "tensor": 1}),
    ],
)
def test_good_specs_give_every_axis_a_size(spec, devices, expected):
    assert parse_mesh(spec, devices) == expected


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("model=2", "'model=2' is not AXIS=SIZE"),
        ("data2", "'data2' is not AXIS=SIZE"),
        ("data=two", "size 'two' of data is not an integer"),
        ("data=0", "size of data must be positive or -1"),
        ("data=-2", "size of data must be positive or -1"),
        ("data=-1,fsdp=-1", "only one axis may be -1"),
        ("data=3,fsdp=-1", "3 does not divide the 8 devices"),
        ("data=2,fsdp=2", "data*fsdp*tensor = 4, but there are 8 devices"),
        ("data=2,data=4", "axis data is given twice"),
        ("data=8,data=8", "axis data is given twice"),
    ],
)
def test_bad_specs_are_one_line_errors(spec, needle):
    with pytest.raises(MeshError) as error:
        parse_mesh(spec, 8)
    message = str(error.value)
    assert needle in message and "\n" not in message and message.startswith(f"--mesh {spec}:")


def test_make_mesh_lays_the_devices_out_on_the_named_axes():
    mesh = make_mesh("data=2,tensor=-1,fsdp=2")  # conftest: 8 fake CPU devices
    assert mesh.axis_names == sharding.MESH_AXES
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert sharding.data_parallel_size(mesh) == 4
    assert sorted(d.id for d in mesh.devices.flat) == list(range(8))


def test_make_mesh_over_chosen_devices_and_a_bad_fit():
    mesh = make_mesh("", devices=jax.devices()[:2])
    assert dict(mesh.shape) == {"data": 1, "fsdp": 2, "tensor": 1}
    with pytest.raises(MeshError, match="there are 2 devices"):
        make_mesh("data=4", devices=jax.devices()[:2])
