from onnx import helper

from repfx_deploy.estimate.signature import TensorDesc, node_signature


def _conv(name="c", pads=(1, 1, 1, 1)):
    return helper.make_node("Conv", ["x", "w"], ["y"], name=name, kernel_shape=[3, 3], pads=list(pads))


def _io(cin=8, h=16):
    ins = [TensorDesc((1, cin, h, h), "float32"), TensorDesc((16, cin, 3, 3), "float32", constant=True)]
    return ins, [TensorDesc((1, 16, h, h), "float32")]


def test_signature_is_stable_and_ignores_names():
    ins, outs = _io()
    assert node_signature(_conv("a"), ins, outs) == node_signature(_conv("b"), ins, outs)
    assert len(node_signature(_conv(), ins, outs)) == 20


def test_signature_differs_when_shapes_attributes_or_dtypes_differ():
    ins, outs = _io()
    base = node_signature(_conv(), ins, outs)
    assert node_signature(_conv(), *_io(cin=4)) != base
    assert node_signature(_conv(), *_io(h=32)) != base
    assert node_signature(_conv(pads=(0, 0, 0, 0)), ins, outs) != base
    half = [TensorDesc(t.shape, "float16", t.constant) for t in ins]
    assert node_signature(_conv(), half, outs) != base
    not_const = [ins[0], TensorDesc(ins[1].shape, ins[1].dtype, constant=False)]
    assert node_signature(_conv(), not_const, outs) != base
