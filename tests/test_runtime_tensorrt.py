"""TensorRT engines that store the family's weights once: the planning, the fallbacks and the
weight-name mapping a refit uses, all without TensorRT (the refit itself is NOT verified on
hardware: no TensorRT and no NVIDIA GPU here)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from esta_export.backends.tensorrt import build_plan, weights_plan
from esta_export.runtime.tensorrt.build import weights_mode
from esta_export.runtime.tensorrt.capabilities import capabilities
from esta_export.runtime.tensorrt.refit import RefitError, named_weight_plan, read_tensor
from esta_export.targets import load_target


def _plan(name, precision="fp16"):
    return build_plan(load_target(name), precision, input_name="pixels", chw=(3, 224, 224),
                      onnx="s/model.onnx", engine="s/model.plan", layer_info="s/layers.json")


def test_engines_are_planned_stripped_where_tensorrt_can_refit():
    orin = _plan("jetson-orin")
    assert orin["weights"] == "stripped" and orin["weights_full_reason"] is None
    jp5 = _plan("jetson-orin-jp5")  # TensorRT 8.5: no STRIP_PLAN / REFIT_IDENTICAL
    assert jp5["weights"] == "full" and "STRIP_PLAN" in jp5["weights_full_reason"]
    dla = _plan("jetson-orin-dla")
    assert dla["weights"] == "full" and "DLA" in dla["weights_full_reason"]
    assert weights_plan(load_target("nvidia-gpu"), capabilities("10.3"))[0] == "stripped"


def test_a_device_older_than_the_plan_builds_full_engines_and_says_so():
    """A kit planned for TensorRT 10 on a device that has 8.6: full engine, with the reason."""
    plan = _plan("jetson-orin")
    assert weights_mode(plan, capabilities("10.3.0")) == ("stripped", None)
    mode, why = weights_mode(plan, capabilities("8.6.2"))
    assert mode == "full" and "STRIP_PLAN" in why and "full engine" in why
    assert weights_mode(dict(plan, weights="full"), capabilities("10.3.0")) == ("full", None)


@pytest.fixture(scope="module")
def trt_bundle(tmp_path_factory):
    from fixtures.family import make_family
    from esta_export.bundle.writer import write_bundle
    from esta_export.compile import compile_export

    job = make_family(tmp_path_factory.mktemp("strip"), with_selection=False)
    summary = compile_export(job / "export", "jetson-orin", job / "compiled" / "jetson-orin")
    if summary["engines_built"]:
        pytest.skip("running on a Jetson: engines were built at compile time")
    return write_bundle(job, "jetson-orin", job / "bundle")


def test_bundle_records_stripped_engines_and_their_one_weights_file(trt_bundle):
    m = json.loads((trt_bundle / "manifest.json").read_text())
    kit = json.loads((trt_bundle / "kit.json").read_text())
    engines = m["target"]["tensorrt"]["engines"]
    assert {int(k) for k in engines} == {s["id"] for s in m["stitches"]}
    assert all(e == {"weights": "stripped", "why_full": None} for e in engines.values())
    for plan in kit["plans"]:  # every stripped engine refits from the same shared file
        assert plan["weights"] == "stripped"
        assert plan["shared_weights"] == {"index": "models/weights.json", "file": "models/weights.bin"}
    assert m["weights"]["file"] == "models/weights.bin"


def test_named_weights_map_onto_the_shared_file(trt_bundle):
    """The ONNX parser names an engine's refittable weights after the graph's initializers: each
    of them the shared index holds maps onto the very bytes the graph reads, small constants kept
    inside the graph come back as missing (so the named path refuses rather than refitting half),
    and a name the graph does not have is missing too."""
    import onnx
    from onnx import numpy_helper

    index = json.loads((trt_bundle / "models" / "weights.json").read_text())
    data = trt_bundle / "models" / "weights.bin"
    for sid in (0, 1, 3):
        model = onnx.load(str(trt_bundle / "models" / f"stitch_{sid:03d}.onnx"), load_external_data=True,
                          )
        inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        external = {t.name for t in onnx.load(str(trt_bundle / "models" / f"stitch_{sid:03d}.onnx"),
                                               load_external_data=False).graph.initializer
                    if t.data_location == onnx.TensorProto.EXTERNAL}
        mapping, missing = named_weight_plan([*inits, "not_in_graph"], index, sid)
        assert set(mapping) == external and external
        assert set(missing) == (set(inits) - external) | {"not_in_graph"}
        for name, i in mapping.items():
            np.testing.assert_array_equal(read_tensor(index, data, i), inits[name])
    # shared: stitches that reuse an anchor's tensors point at the same unique tensor
    used = {sid: set(named_weight_plan(list(names), index, sid)[0].values())
            for sid, names in index["stitches"].items()}
    assert any(used[a] & used[b] for a in used for b in used if a < b)
    assert len(index["tensors"]) < sum(len(v) for v in index["stitches"].values())
    with pytest.raises(RefitError, match="stitch 99 has no entry"):
        named_weight_plan(["x"], index, 99)


def test_a_truncated_weights_file_is_refused(trt_bundle, tmp_path):
    index = json.loads((trt_bundle / "models" / "weights.json").read_text())
    short = tmp_path / "weights.bin"
    short.write_bytes((trt_bundle / "models" / "weights.bin").read_bytes()[:64])
    last = max(range(len(index["tensors"])), key=lambda i: index["tensors"][i]["offset"])
    with pytest.raises(RefitError, match="shorter than the weights index"):
        read_tensor(index, short, last)
