"""Model files (gpudnn.io): bit-exact round trips, safetensors compatibility, hostile files."""

import functools
import importlib.util
import json
import os
import pickle
import re

import numpy as np
import pytest

import gpudnn
from gpudnn import ModelFileError, Network, io
from gpudnn.data import Standardizer
from helpers import PickleBomb


# --- helpers -----------------------------------------------------------------------------
def make_net(backend, sizes=(4, 6, 3), dtype="float32", seed=0, **kw):
    """A network with random weights and random (non-zero) biases."""
    net = Network(list(sizes), dtype=dtype, backend=backend, seed=seed, **kw)
    rng = np.random.default_rng(seed + 1)
    for b in net.b:
        b[...] = net.backend.asarray(rng.standard_normal(b.shape).astype(dtype))
    return net


def host(net, a):
    return net.backend.to_numpy(a)


def assert_same_params(a, b):
    """Bit-exact equality of every W[l] and b[l] (compares the raw bytes)."""
    assert a.config() == b.config()
    assert a.dtype == b.dtype
    for l in range(a.n_layers):
        for x, y in ((a.W[l], b.W[l]), (a.b[l], b.b[l])):
            x, y = host(a, x), host(b, y)
            assert x.shape == y.shape and x.dtype == y.dtype
            assert x.tobytes() == y.tobytes()


def split(raw):
    """(header dict, tensor bytes) of a safetensors file's bytes."""
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def join(header, data, n=None, digest=False):
    """The bytes of a file of ``header`` and ``data``, without the digest unless ``digest``:
    an edited header no longer matches it, and such files test the checks a hostile file,
    which need not carry one, meets."""
    meta = header.get("__metadata__")
    if not digest and isinstance(meta, dict):
        header = {**header, "__metadata__": {k: v for k, v in meta.items() if k != io.DIGEST}}
    text = json.dumps(header).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)
    return (len(text) if n is None else n).to_bytes(8, "little") + text + data


def assert_rejected(path, *words):
    """load(path) raises ModelFileError whose message starts with the path (and has words)."""
    with pytest.raises(ModelFileError) as info:
        io.load(path, backend="numpy")
    msg = str(info.value)
    assert msg.startswith(str(path)), msg
    for w in words:
        assert w in msg, msg
    return msg


@pytest.fixture
def saved(tmp_path):
    """(path, raw bytes, header, data) of a small valid float32 model [4, 6, 3]."""
    net = make_net("numpy")
    net.classes_ = np.array([0, 1, 2])
    path = tmp_path / "model.safetensors"
    net.save(path)
    raw = path.read_bytes()
    header, data = split(raw)
    return path, raw, header, data


# --- round trips -------------------------------------------------------------------------
ARCHS = [
    dict(sizes=(4, 3)),
    dict(sizes=(5, 8, 3), activation="tanh"),
    dict(sizes=(3, 7, 5, 2), activation=["relu", "sigmoid"], output="identity", loss="mse"),
    dict(sizes=(6, 4, 4, 4, 1), activation=["leaky_relu", "identity", "tanh"], output="sigmoid"),
    dict(sizes=(2, 9, 2), activation="relu", output="tanh", init="glorot_normal", seed=7),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: "-".join(map(str, a["sizes"])))
def test_round_trip_bit_exact(backend, tmp_path, dtype, arch):
    arch = dict(arch)
    net = make_net(backend, arch.pop("sizes"), dtype=dtype, **arch)
    path = tmp_path / "net.safetensors"
    net.save(path)
    assert (8 + int.from_bytes(path.read_bytes()[:8], "little")) % 8 == 0  # aligned data
    assert os.listdir(tmp_path) == ["net.safetensors"]  # no temp file left behind
    back = io.load(path, backend=backend)
    assert back.backend.name == backend.name
    assert_same_params(net, back)
    assert back.activation == net.activation and back.output == net.output
    assert back.classes_ is None and back.scaler is None
    X = np.random.default_rng(3).standard_normal((net.sizes[0], 11))
    out, out_back = host(net, net.forward(X)), host(back, back.forward(X))
    assert out.tobytes() == out_back.tobytes()


@pytest.mark.parametrize(
    "classes",
    [
        np.array([3, 5, 7]),
        np.array([-1, 1], dtype=np.int32),
        np.array([0.5, 1.25, 1e300]),
        np.array(["cat", "dog", "emu"]),
        np.array(["", "long label", "ä"], dtype="<U12"),
        np.array([b"x", b"\xff\x00y"]),
        np.array([False, True]),
    ],
    ids=["int64", "int32", "float", "str", "unicode", "bytes", "bool"],
)
def test_round_trip_classes(tmp_path, classes):
    net = make_net("numpy", sizes=(4, 6, len(classes)))  # a softmax unit per class
    net.classes_ = classes
    path = tmp_path / "c.safetensors"
    net.save(path)
    back = io.load(path, backend="numpy")
    assert isinstance(back.classes_, np.ndarray)
    assert back.classes_.dtype == classes.dtype
    assert back.classes_.tolist() == classes.tolist()


def test_round_trip_scaler_and_predictions(backend, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(3.0, 2.0, size=(50, 4))
    X[:, 2] = 1.0  # a constant feature: scale 1
    net = make_net(backend)
    net.scaler = Standardizer.fit(X)
    net.classes_ = np.array(["a", "b", "c"])
    path = tmp_path / "s.safetensors"
    net.save(path)
    back = gpudnn.load(path) if backend.name == "numpy" else io.load(path, backend=backend)
    assert back.scaler.mean.tobytes() == net.scaler.mean.tobytes()
    assert back.scaler.scale.tobytes() == net.scaler.scale.tobytes()
    assert back.classes_.tolist() == ["a", "b", "c"]
    A0 = net.scaler.transform(X).T
    assert host(net, net.forward(A0)).tobytes() == host(back, back.forward(A0)).tobytes()
    if importlib.util.find_spec("gpudnn.train") is None:  # predict lives there
        return
    np.testing.assert_array_equal(net.predict(X), back.predict(X))


def test_a_regressions_target_standardisation_is_kept_and_checked(tmp_path):
    """target_scaler (fit(standardize_targets=True)) round-trips bit for bit and predict
    gives the same values; one of the wrong length, non-finite, with zero scale, or on a
    classifier's file is refused."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 4))
    net = gpudnn.Network([4, 5, 2], output="identity", backend="numpy", seed=3)
    net.target_scaler = Standardizer(np.array([5000.0, -3.0]), np.array([800.0, 0.25]))
    path = tmp_path / "r.safetensors"
    net.save(path)
    back = io.load(path, backend="numpy")
    assert back.target_scaler.mean.tobytes() == net.target_scaler.mean.tobytes()
    assert back.target_scaler.scale.tobytes() == net.target_scaler.scale.tobytes()
    np.testing.assert_array_equal(back.predict(X), net.predict(X))
    assert np.abs(net.predict(X)[:, 0]).mean() > 1000  # in the targets' units
    header, data = split(path.read_bytes())
    for bad, words in [('{"mean": [0], "scale": [1]}', "target_scaler mean must be 2 finite numbers (one per output)"),
                       ('{"mean": [0, NaN], "scale": [1, 1]}', "target_scaler mean must be 2 finite"),
                       ('{"mean": [0, 0], "scale": [1, 0]}', "target_scaler scale has zeros")]:
        _meta(header)["target_scaler"] = bad
        path.write_bytes(join(header, data))
        with pytest.raises(ModelFileError, match=re.escape(words)):
            io.load(path, backend="numpy")
    make_net("numpy").save(path)  # a classifier
    header, data = split(path.read_bytes())
    _meta(header)["target_scaler"] = '{"mean": [0, 0, 0], "scale": [1, 1, 1]}'
    path.write_bytes(join(header, data))
    with pytest.raises(ModelFileError, match="target_scaler is for regression models"):
        io.load(path, backend="numpy")


def test_the_training_files_columns_are_kept_and_checked(tmp_path):
    """data_columns (gpudnn train's: the header and the target's column) round-trip; a
    record that does not fit the model's inputs is refused."""
    net = make_net("numpy")  # 4 inputs
    net.data_columns = {"names": ["y", "a", "b", "c", "d"], "target": 0}
    path = tmp_path / "m.safetensors"
    net.save(path)
    assert io.load(path, backend="numpy").data_columns == net.data_columns
    header, data = split(path.read_bytes())
    for bad in ('{"names": ["a", "b"], "target": 0}', '{"names": null, "target": 5}',
                '{"names": ["y", "a", "a", "c", "d"], "target": 0}', '{"target": 1}'):
        _meta(header)["data_columns"] = bad
        path.write_bytes(join(header, data))
        assert_rejected(path, "data_columns")


def test_save_overwrites_atomically(tmp_path):
    path = tmp_path / "m.safetensors"
    make_net("numpy", seed=1).save(path)
    net = make_net("numpy", seed=2)
    net.save(str(path))
    assert_same_params(net, io.load(path, backend="numpy"))
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_save_refuses_non_finite_weights(tmp_path):
    path = tmp_path / "m.safetensors"
    make_net("numpy").save(path)
    before = path.read_bytes()
    net = make_net("numpy")
    net.W[1][0, 0] = np.nan
    with pytest.raises(ModelFileError, match="non-finite"):
        net.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.safetensors"]


# --- compatibility with the safetensors package ------------------------------------------
def test_readable_by_safetensors(tmp_path):
    st_numpy = pytest.importorskip("safetensors.numpy")
    from safetensors import safe_open

    net = make_net("numpy", (5, 7, 4, 3), dtype="float64", activation=["tanh", "relu"])
    net.classes_ = np.array([10, 20, 30])
    net.scaler = Standardizer(np.arange(5.0), np.full(5, 2.0))
    path = tmp_path / "m.safetensors"
    net.save(path)
    tensors = st_numpy.load_file(str(path))
    assert sorted(tensors) == sorted(io.tensor_names(net.n_layers))
    for l in range(net.n_layers):
        assert tensors[f"{2 * l}.weight"].tobytes() == net.W[l].tobytes()
        assert tensors[f"{2 * l}.weight"].shape == net.W[l].shape
        assert tensors[f"{2 * l}.bias"].shape == (net.sizes[l + 1],)
        assert tensors[f"{2 * l}.bias"].tobytes() == net.b[l].tobytes()
        assert tensors[f"{2 * l}.bias"].dtype == np.float64
    with safe_open(str(path), framework="np") as f:
        meta = f.metadata()
    assert meta == split(path.read_bytes())[0]["__metadata__"]
    assert meta["format"] == "gpudnn" and meta["format_version"] == "1"
    assert json.loads(meta["config"]) == net.config()


def test_file_written_by_safetensors_loads(tmp_path):
    st_numpy = pytest.importorskip("safetensors.numpy")
    net = make_net("numpy", (3, 12, 5, 2), activation=["relu", "tanh"], output="identity")
    net.classes_ = None
    ours = tmp_path / "ours.safetensors"
    net.save(ours)
    meta = split(ours.read_bytes())[0]["__metadata__"]
    tensors = {f"{2 * l}.weight": np.array(net.W[l]) for l in range(net.n_layers)}
    tensors.update({f"{2 * l}.bias": net.b[l].reshape(-1).copy() for l in range(net.n_layers)})
    theirs = tmp_path / "theirs.safetensors"
    st_numpy.save_file(tensors, str(theirs), metadata=meta)
    assert_same_params(net, io.load(theirs, backend="numpy"))


# --- hostile and broken files ------------------------------------------------------------
def test_pickle_payload(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"state_dict": PickleBomb()}))
    assert_rejected(path)
    for proto in (0, 2):  # protocol 0 starts with text, 2 with b"\x80\x02"
        path.write_bytes(pickle.dumps(PickleBomb(), protocol=proto))
        assert_rejected(path)
    assert not PickleBomb.triggered


def test_missing_file_and_directory(tmp_path):
    assert_rejected(tmp_path / "nope.safetensors", "no such file")
    assert_rejected(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    assert_rejected(path, "too short")


def test_truncated(saved):
    path, raw, header, data = saved
    n = len(raw) - len(data) - 8
    for cut in sorted({1, 7, 8, 9, 8 + n // 2, 8 + n - 1, 8 + n, 8 + n + 1, len(raw) - 1}):
        path.write_bytes(raw[:cut])
        assert_rejected(path)


@pytest.mark.parametrize("n", [2**60, 2**64 - 1, 17 * 2**20])
def test_header_length_huge(tmp_path, n):
    path = tmp_path / "m.safetensors"
    path.write_bytes(n.to_bytes(8, "little") + b"{}" * 8)
    assert_rejected(path, "header length")


def test_header_length_past_end(saved):
    path, raw, header, data = saved
    path.write_bytes(len(raw).to_bytes(8, "little") + raw[8:])
    assert_rejected(path, "past the end")


@pytest.mark.parametrize(
    "text",
    [b"", b"not json", b"{\"a\": ", b"\xff\xfe{}", b"[" * 200_000, b"{\"__metadata__\": NaN}"],
    ids=["empty", "text", "cut", "not-utf8", "deep", "nan"],
)
def test_header_not_json(tmp_path, text):
    path = tmp_path / "m.safetensors"
    path.write_bytes(len(text).to_bytes(8, "little") + text)
    assert_rejected(path)


@pytest.mark.parametrize("text", [b"[1, 2]", b"\"str\"", b"3", b"null"])
def test_header_not_object(tmp_path, text):
    path = tmp_path / "m.safetensors"
    path.write_bytes(len(text).to_bytes(8, "little") + text)
    assert_rejected(path, "not an object")


def test_duplicate_header_key(saved):
    path, raw, header, data = saved
    text = json.dumps(header)
    text = text[:-1] + ', "0.bias": ' + json.dumps(header["0.bias"]) + "}"
    path.write_bytes(len(text).to_bytes(8, "little") + text.encode() + data)
    assert_rejected(path, "duplicate")


def _meta(h):
    return h["__metadata__"]


def _config(h):
    return json.loads(h["__metadata__"]["config"])


def _set_config(h, **kw):
    c = _config(h)
    c.update(kw)
    h["__metadata__"]["config"] = json.dumps(c)


def _shift(name, d):
    def f(h):
        b, e = h[name]["data_offsets"]
        h[name]["data_offsets"] = [b + d, e + d]

    return f


# (id, mutation of the header dict, mutation of the data bytes or None, words in the message)
HEADER_CASES = [
    ("no-metadata", lambda h: h.pop("__metadata__"), None, ["__metadata__"]),
    ("metadata-list", lambda h: h.update(__metadata__=["x"]), None, ["__metadata__"]),
    ("metadata-int-value", lambda h: _meta(h).update(format_version=1), None, []),
    ("wrong-format", lambda h: _meta(h).update(format="pt"), None, ["format"]),
    ("no-format", lambda h: _meta(h).pop("format"), None, ["format"]),
    ("version-2", lambda h: _meta(h).update(format_version="2"), None, ["format_version"]),
    ("no-config", lambda h: _meta(h).pop("config"), None, ["config"]),
    ("config-not-json", lambda h: _meta(h).update(config="{sizes"), None, ["config"]),
    ("config-list", lambda h: _meta(h).update(config="[4, 6, 3]"), None, ["config"]),
    ("config-unknown-key", lambda h: _set_config(h, exec="rm -rf /"), None, ["unknown"]),
    ("sizes-huge", lambda h: _set_config(h, sizes=[10**9, 10**9]), None, []),
    ("sizes-10e9-3", lambda h: _set_config(h, sizes=[10**9, 10**9, 3]), None, []),
    ("sizes-float", lambda h: _set_config(h, sizes=[4.0, 6, 3]), None, ["sizes"]),
    ("sizes-bool", lambda h: _set_config(h, sizes=[4, 6, True]), None, ["sizes"]),
    ("sizes-zero", lambda h: _set_config(h, sizes=[4, 0, 3]), None, ["sizes"]),
    ("sizes-short", lambda h: _set_config(h, sizes=[4]), None, ["sizes"]),
    ("sizes-missing", lambda h: _set_config(h, sizes=None), None, ["sizes"]),
    ("sizes-other", lambda h: _set_config(h, sizes=[3, 6, 4]), None, []),
    ("bad-activation", lambda h: _set_config(h, activation="bogus"), None, ["config"]),
    ("activation-int", lambda h: _set_config(h, activation=5), None, ["activation"]),
    ("activation-count", lambda h: _set_config(h, activation=["relu", "tanh"]), None, []),
    ("bad-loss", lambda h: _set_config(h, loss="mse"), None, ["config"]),
    ("loss-list", lambda h: _set_config(h, loss=["mse"]), None, ["loss"]),
    ("bad-output", lambda h: _set_config(h, output={"a": 1}), None, ["output"]),
    ("bad-init", lambda h: _set_config(h, init="zeros"), None, ["config"]),
    ("bad-seed", lambda h: _set_config(h, seed=-1), None, ["seed"]),
    ("seed-str", lambda h: _set_config(h, seed="0"), None, ["seed"]),
    ("bad-dtype", lambda h: _set_config(h, dtype="float16"), None, ["dtype"]),
    ("dtype-f64-config", lambda h: _set_config(h, dtype="float64"), None, []),
    ("missing-tensor", lambda h: h.pop("2.bias"), None, ["missing", "2.bias"]),
    ("extra-tensor", lambda h: h.update({"4.weight": dict(h["2.bias"])}), None, ["4.weight"]),
    ("renamed-tensor", lambda h: h.update({"1.bias": h.pop("0.bias")}), None, []),
    ("tensor-not-object", lambda h: h.update({"0.bias": [1, 2]}), None, ["0.bias"]),
    ("tensor-extra-key", lambda h: h["0.bias"].update(x=1), None, ["0.bias"]),
    ("wrong-shape-transposed", lambda h: h["0.weight"].update(shape=[4, 6]), None, ["shape"]),
    ("wrong-shape-flat", lambda h: h["0.weight"].update(shape=[24]), None, ["shape"]),
    ("wrong-shape-bias-2d", lambda h: h["0.bias"].update(shape=[6, 1]), None, ["shape"]),
    ("shape-floats", lambda h: h["0.bias"].update(shape=[6.0]), None, ["shape"]),
    ("shape-float-frac", lambda h: h["2.bias"].update(shape=[3.5]), None, ["shape"]),
    ("shape-bool", lambda h: h["2.bias"].update(shape=[True]), None, ["shape"]),
    ("wrong-dtype-f16", lambda h: h["0.weight"].update(dtype="F16"), None, ["dtype"]),
    ("wrong-dtype-f64", lambda h: h["2.bias"].update(dtype="F64"), None, ["dtype"]),
    ("wrong-dtype-i32", lambda h: h["0.bias"].update(dtype="I32"), None, ["dtype"]),
    ("overlap", _shift("0.bias", -4), None, ["overlaps"]),
    ("gap", _shift("0.weight", 4), None, ["gap"]),
    ("past-end", _shift("2.bias", 4), None, []),
    ("overlap-same", lambda h: h["0.bias"].update(data_offsets=[0, 24]), None, []),
    ("offsets-reversed", lambda h: h["0.bias"].update(data_offsets=[120, 96]), None, []),
    ("offsets-negative", lambda h: h["0.weight"].update(data_offsets=[-4, 92]), None, []),
    ("offsets-floats", lambda h: h["0.bias"].update(data_offsets=[96.0, 120.0]), None, []),
    ("offsets-three", lambda h: h["0.bias"].update(data_offsets=[96, 120, 0]), None, []),
    ("offsets-str", lambda h: h["0.bias"].update(data_offsets="96:120"), None, []),
    ("offsets-huge", lambda h: h["2.bias"].update(data_offsets=[2**63, 2**63 + 12]), None, []),
    ("trailing-garbage", lambda h: None, lambda d: d + b"\0" * 8, ["trailing"]),
    ("trailing-1", lambda h: None, lambda d: d + b"x", []),
    ("data-short", lambda h: None, lambda d: d[:-4], []),
    ("nan-weight", lambda h: None, lambda d: np.float32(np.nan).tobytes() + d[4:], ["NaN"]),
    ("inf-bias", lambda h: None, lambda d: d[:-4] + np.float32(-np.inf).tobytes(), ["NaN"]),
    ("classes-not-json", lambda h: _meta(h).update(classes="[1, 2"), None, ["classes"]),
    ("classes-object", lambda h: _meta(h).update(classes='{"a": 1}'), None, ["classes"]),
    ("classes-dtype-bad", lambda h: _meta(h).update(classes_dtype="not a dtype"), None, []),
    ("classes-dtype-void", lambda h: _meta(h).update(classes_dtype="|V8"), None, []),
    ("classes-dtype-struct", lambda h: _meta(h).update(classes_dtype="i4,i4"), None, []),
    ("classes-dtype-datetime", lambda h: _meta(h).update(classes_dtype="<M8[s]"), None, []),
    (
        "classes-dtype-huge",
        lambda h: _meta(h).update(classes='["a"]', classes_dtype="<U99999999"),
        None,
        ["bytes"],
    ),
    ("classes-type-mismatch", lambda h: _meta(h).update(classes='["a", 1]'), None, []),
    ("classes-overflow", lambda h: _meta(h).update(classes="[1e999999]"), None, []),
    ("classes-int-overflow", lambda h: _meta(h).update(classes=f"[{2**70}]"), None, []),
    (
        "classes-str-too-long",
        lambda h: _meta(h).update(classes='["abc"]', classes_dtype="<U2"),
        None,
        [],
    ),
    ("scaler-not-json", lambda h: _meta(h).update(scaler="{"), None, ["scaler"]),
    ("scaler-list", lambda h: _meta(h).update(scaler="[1]"), None, ["scaler"]),
    ("scaler-no-keys", lambda h: _meta(h).update(scaler="{}"), None, ["scaler"]),
    (
        "scaler-wrong-length",
        lambda h: _meta(h).update(scaler='{"mean": [0, 0], "scale": [1, 1]}'),
        None,
        ["scaler"],
    ),
    (
        "scaler-strings",
        lambda h: _meta(h).update(scaler='{"mean": ["a", 0, 0, 0], "scale": [1, 1, 1, 1]}'),
        None,
        ["scaler"],
    ),
    (
        "scaler-bools",
        lambda h: _meta(h).update(scaler='{"mean": [true, 0, 0, 0], "scale": [1, 1, 1, 1]}'),
        None,
        ["scaler"],
    ),
    (
        "scaler-nan",
        lambda h: _meta(h).update(scaler='{"mean": [NaN, 0, 0, 0], "scale": [1, 1, 1, 1]}'),
        None,
        ["scaler"],
    ),
    (
        "scaler-zero-scale",
        lambda h: _meta(h).update(scaler='{"mean": [0, 0, 0, 0], "scale": [1, 0, 1, 1]}'),
        None,
        ["scaler"],
    ),
]


@pytest.mark.parametrize("mutate,mutate_data,words", [c[1:] for c in HEADER_CASES],
                         ids=[c[0] for c in HEADER_CASES])
def test_broken_header(saved, mutate, mutate_data, words):
    path, raw, header, data = saved
    mutate(header)
    if mutate_data is not None:
        data = mutate_data(data)
    path.write_bytes(join(header, data))
    assert_rejected(path, *words)


def test_unchanged_file_loads(saved):
    """The fixture's file itself is fine, so each broken-header case fails for its change."""
    path, raw, header, data = saved
    path.write_bytes(join(header, data))
    net = io.load(path, backend="numpy")
    assert net.classes_.tolist() == [0, 1, 2]


def test_unpadded_header_loads(saved):
    """Other writers need not pad the header to a multiple of 8."""
    path, raw, header, data = saved
    text = json.dumps(header).encode()
    if (8 + len(text)) % 8 == 0:
        text += b" "
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    net, want = io.load(path, backend="numpy"), make_net("numpy")  # the network saved()
    assert net.sizes == want.sizes and net.activation == want.activation
    np.testing.assert_array_equal(net.params, want.params)
    np.testing.assert_array_equal(net.classes_, [0, 1, 2])


def test_layout_order_does_not_matter(saved):
    """Tensors may lie in any order in the data, as long as they tile it exactly."""
    path, raw, header, data = saved
    names = io.tensor_names(2)
    chunks = {n: data[slice(*header[n]["data_offsets"])] for n in names}
    new, pos = b"", 0
    for n in reversed(names):
        header[n]["data_offsets"] = [pos, pos + len(chunks[n])]
        new += chunks[n]
        pos += len(chunks[n])
    path.write_bytes(join(header, new))
    back = io.load(path, backend="numpy")
    original = Network([4, 6, 3], backend="numpy")
    for l in range(2):
        for part, arr in (("weight", back.W[l]), ("bias", back.b[l])):
            assert arr.tobytes() == chunks[f"{2 * l}.{part}"]
    assert original.W[0].shape == back.W[0].shape


@pytest.mark.parametrize("digest", [False, True], ids=["written-before-digests", "with-digest"])
def test_flipped_bytes(saved, digest):
    """Flipping any byte gives a model or a ModelFileError, never another exception; with
    the digest, the very model saved (a flip that turns header padding into other
    whitespace leaves the same JSON) or "data damaged"."""
    path, raw, header, data = saved
    raw = join(header, data, digest=digest)
    path.write_bytes(raw)
    saved_params = io.load(path, backend="numpy").params.tobytes()
    rng = np.random.default_rng(2024)
    n_header = len(raw) - len(data)
    positions = np.concatenate(
        [np.arange(16), rng.integers(0, n_header, 300), rng.integers(0, len(raw), 100)]
    )
    loaded = 0
    for pos in positions:
        buf = bytearray(raw)
        buf[pos] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(buf))
        try:
            net = io.load(path, backend="numpy")
        except ModelFileError as exc:
            assert str(exc).startswith(str(path))
            continue
        loaded += 1
        assert all(np.isfinite(w).all() for w in net.W)
        assert not digest or net.params.tobytes() == saved_params
    assert (digest or 0 < loaded) and loaded < len(positions)


def test_network_not_allocated_for_absurd_sizes(saved, monkeypatch):
    """sizes [1e9, 1e9] is rejected from the file length alone, before any Network exists."""
    path, raw, header, data = saved
    _set_config(header, sizes=[10**9, 10**9])
    header["0.weight"]["shape"] = [10**9, 10**9]
    header["0.bias"]["shape"] = [10**9]
    del header["2.weight"], header["2.bias"]
    path.write_bytes(join(header, data))

    @functools.wraps(Network.__init__)  # io reads the config keys from its signature
    def no_network(*a, **k):
        raise AssertionError("Network built for an absurd file")

    monkeypatch.setattr(gpudnn.network.Network, "__init__", no_network)
    assert_rejected(path, "bytes of tensor data")


# --- zip bombs: what a file claims never decides what is allocated ------------------------
def _peak_bytes_of_load(path):
    """(peak bytes traced by tracemalloc while load(path) runs, the ModelFileError)."""
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError) as info:
            io.load(path, backend="numpy")
        return tracemalloc.get_traced_memory()[1], info.value
    finally:
        tracemalloc.stop()


def _claims(header, data):
    """Tiny files (a few hundred bytes) whose header claims gigabytes or more."""
    def variant(**meta):
        h = json.loads(json.dumps(header))
        _meta(h).update(meta)
        return h

    huge = json.loads(json.dumps(header))
    _set_config(huge, sizes=[2**31, 2**31])
    huge["0.weight"].update(shape=[2**31, 2**31], data_offsets=[0, 2**64])
    huge["0.bias"].update(shape=[2**31], data_offsets=[2**64, 2**64 + 2**33])
    del huge["2.weight"], huge["2.bias"]
    deep = json.loads(json.dumps(header))
    _set_config(deep, sizes=[4] + [2**20] * 40 + [3])
    yield "shapes-2^31", join(huge, data)
    yield "sizes-2^20-x40", join(deep, data)
    yield "header-length-2^63", (2**63).to_bytes(8, "little") + b"{}"
    yield "header-length-16M", (16 * 2**20).to_bytes(8, "little") + b"{" + b" " * 100
    yield "classes-U16M", join(variant(classes='["a"]', classes_dtype="<U16000000"), data)
    yield "classes-S64M", join(variant(classes='["a", "b"]', classes_dtype="|S33554432"), data)
    yield "data-offsets-2^63", join(
        {**header, "2.bias": {**header["2.bias"], "data_offsets": [2**63, 2**63 + 12]}}, data
    )


def test_tiny_files_claiming_huge_arrays_allocate_almost_nothing(saved):
    """A zip bomb for model files: a few hundred bytes that declare terabytes of tensors,
    million-wide layers or 64 MB label dtypes. Every one is refused with at most 1 MiB
    allocated: sizes are compared with the file's own length before anything is made."""
    path, raw, header, data = saved
    for name, blob in _claims(header, data):
        assert len(blob) < 4096, name
        path.write_bytes(blob)
        peak, err = _peak_bytes_of_load(path)
        assert str(err).startswith(str(path)), (name, err)
        assert peak < 2**20, (name, peak, err)


def _big_headers(header, data):
    """Hostile headers of about 1 MB: what they cost is bounded by their own size."""
    def with_(**extra):
        h = json.loads(json.dumps(header))
        h.update(extra)
        return h

    long_sizes = json.loads(json.dumps(header))
    _set_config(long_sizes, sizes=[1] * 300_000)
    many_classes = json.loads(json.dumps(header))
    _meta(many_classes)["classes"] = json.dumps(list(range(300_000)))
    yield "sizes-300k-long", join(long_sizes, data)
    yield "300k-empty-lists", join(with_(junk=[[]] * 300_000), data)
    yield "100k-empty-tensors", join(with_(**{f"{2 * i}.weight": {} for i in range(3, 100_003)}), data)
    yield "300k-classes", join(many_classes, data)


def test_hostile_headers_cost_at_most_a_few_times_their_size(saved):
    """Parsing JSON costs Python objects (about 20 bytes per byte at worst, for "[],"),
    so the header is capped at MAX_HEADER_BYTES; nothing else may grow with what it
    declares: a 600 kB ``sizes`` list once built 2L names and shapes (~100x its size)."""
    path, raw, header, data = saved
    for name, blob in _big_headers(header, data):
        path.write_bytes(blob)
        peak, err = _peak_bytes_of_load(path)
        assert peak < 32 * len(blob), (name, peak / len(blob), err)


def test_header_cap_is_checked_before_reading(tmp_path):
    path = tmp_path / "m.safetensors"
    n = io.MAX_HEADER_BYTES + 8
    path.write_bytes(n.to_bytes(8, "little") + b"{" + b" " * (n - 2) + b"}")
    peak, err = _peak_bytes_of_load(path)
    assert "larger than" in str(err) and peak < 2**20


@pytest.mark.parametrize("name", ["0" * 5000 + ".weight", "9" * 5000 + ".bias", "2.weight ", "-2.bias"])
def test_tensor_names_that_are_not_ours(saved, name):
    """Names are matched, never converted blindly (int('9' * 5000) raises in Python 3.11+)."""
    path, raw, header, data = saved
    header[name] = header.pop("2.bias")
    path.write_bytes(join(header, data))
    assert_rejected(path, "unexpected tensors")


def test_more_classes_than_outputs(saved):
    path, raw, header, data = saved
    _meta(header)["classes"] = json.dumps(list(range(4)))
    path.write_bytes(join(header, data))
    assert_rejected(path, "4 classes for an output layer of 3")


def test_save_to_a_directory_is_refused_before_writing(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(ModelFileError, match=r"d: is a directory; name a file"):
        make_net("numpy").save(tmp_path / "d")
    assert os.listdir(tmp_path / "d") == [] and os.listdir(tmp_path) == ["d"]


def test_a_failed_write_is_a_model_file_error_and_leaves_nothing(tmp_path, monkeypatch):
    def full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io.os, "replace", full)
    with pytest.raises(ModelFileError, match=r"m\.safetensors: cannot write \(No space left on device\)"):
        make_net("numpy").save(tmp_path / "m.safetensors")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("content", [b"x0,x1,y\n0.5,1.5,0\n" * 4, b"PK\x03\x04" + b"\0" * 60,
                                     b"\x93NUMPY\x01\x00" + b" " * 56],
                         ids=["csv", "zip", "npy"])
def test_a_file_that_is_not_safetensors_says_so(tmp_path, content):
    """A data file given as the model: its first 8 bytes read as a header length are absurd
    and no JSON header follows; said so, not "header length 3634... is larger than"."""
    path = tmp_path / "d.csv"
    path.write_bytes(content)
    msg = assert_rejected(path, "not a safetensors file")
    assert len(msg.splitlines()) == 1


# --- class labels that do not fit the output layer ---------------------------------------
def _with_classes(path, classes, dtype="<i8"):
    """Rewrite the model file at ``path`` with other classes / classes_dtype metadata."""
    header, data = split(path.read_bytes())
    _meta(header).update(classes=classes, classes_dtype=dtype)
    if dtype is None:
        del _meta(header)["classes_dtype"]
    path.write_bytes(join(header, data))


@pytest.mark.parametrize("classes, dtype, words", [
    ("[0, 1, 2]", "<i8", ["10 labels (one per output unit), got 3 label(s)"]),  # predict raised IndexError
    ("[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]", "<i8", ["distinct"]),  # every prediction 0
    ("[[1], [1], [1], [1], [1], [1], [1], [1], [1], [1]]", "<i8", ["list of 10 labels", "shape (10, 1)"]),  # 2-D
    ("[9, 8, 7, 6, 5, 4, 3, 2, 1, 0]", "<i8", ["increasing"]),  # evaluate's lookup needs order
    ('[1, "b", 2.5, 3, 4, 5, 6, 7, 8, 9]', "|O", ["classes_dtype"]),
    ("[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]", None, ["classes_dtype"]),
], ids=["too-few", "duplicates", "nested", "unsorted", "object", "no-dtype"])
def test_classes_that_do_not_fit_the_output_are_refused(tmp_path, classes, dtype, words):
    """A 10-unit softmax needs 10 distinct labels in increasing order (as fit makes them), 1-D,
    of a plain dtype: anything else loaded and then failed or lied at predict time."""
    net = make_net("numpy", sizes=(4, 6, 10))
    net.classes_ = np.arange(10)
    path = tmp_path / "m.safetensors"
    net.save(path)
    _with_classes(path, classes, dtype)
    assert_rejected(path, *words)


@pytest.mark.parametrize("sizes, kw, classes, words", [
    ((4, 1), dict(output="sigmoid"), [0, 1], None),
    ((4, 1), dict(output="sigmoid"), ["no"], ["2 labels (the two classes of one sigmoid unit), got 1"]),
    ((4, 3), dict(output="sigmoid"), [0, 1, 2], ["not a classifier"]),  # multi-label
    ((4, 2), dict(output="identity", loss="mse"), [0, 1], ["not a classifier"]),
])
def test_classes_of_sigmoid_and_regression_models(tmp_path, sizes, kw, classes, words):
    """One sigmoid unit classifies two labels; multi-label and regression models have no
    classes (predict would map only the first output, or ignore them)."""
    net = make_net("numpy", sizes=sizes, **kw)
    path = tmp_path / "m.safetensors"
    net.save(path)
    _with_classes(path, json.dumps(classes), np.array(classes).dtype.str)
    if words is None:
        assert io.load(path, backend="numpy").classes_.tolist() == classes
    else:
        assert_rejected(path, *words)


@pytest.mark.parametrize("classes", [np.array([0, 0, 1]), np.array([1, "b", 2.5], dtype=object),
                                     np.array([0, 1]), np.array([[0], [1], [2]])],
                         ids=["duplicates", "object", "too-few", "2-D"])
def test_save_refuses_classes_load_would_refuse(tmp_path, classes):
    net = make_net("numpy")  # a 3-unit softmax
    net.classes_ = classes
    with pytest.raises(ModelFileError, match="classes"):
        net.save(tmp_path / "m.safetensors")
    assert os.listdir(tmp_path) == []


# --- the digest: damage that leaves a well-formed file -----------------------------------
def test_a_changed_weight_byte_is_found_by_the_digest(saved):
    """A byte of tensor data overwritten (the weight stays finite) loaded as another model."""
    path, raw, header, data = saved
    buf = bytearray(raw)
    buf[len(raw) - len(data)] ^= 1  # the lowest mantissa bit of W[0][0, 0]
    path.write_bytes(bytes(buf))
    assert_rejected(path, "data damaged (digest mismatch)")


def test_changed_metadata_is_found_by_the_digest(saved):
    path, raw, header, data = saved
    _meta(header).update(classes="[5, 6, 7]")  # well-formed, and other labels
    path.write_bytes(join(header, data, digest=True))
    assert_rejected(path, "data damaged (digest mismatch)")


def test_a_file_without_a_digest_loads_unchecked(saved):
    """Files written before the digest (or by other writers) load as before."""
    path, raw, header, data = saved
    assert io.DIGEST in _meta(header)
    path.write_bytes(join(header, data))
    assert io.DIGEST not in _meta(split(path.read_bytes())[0])
    assert io.load(path, backend="numpy").classes_.tolist() == [0, 1, 2]
