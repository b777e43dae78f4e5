"""Model files: the safetensors format, written and read with NumPy alone.

Layout of a file (https://github.com/huggingface/safetensors):

    8 bytes     N, the header length, little-endian u64
    N bytes     UTF-8 JSON header, padded with spaces so that 8 + N is a multiple of 8
    the rest    raw little-endian tensor bytes, back to back, no holes, nothing after

Header: ``{"__metadata__": {str: str}, name: {"dtype": "F32"|"F64", "shape": [...],
"data_offsets": [begin, end]}, ...}``, offsets relative to the first byte after the header.

Tensors are named like a ``torch.nn.Sequential`` of ``Linear`` layers each followed by one
activation module, so ``model.load_state_dict(safetensors.torch.load_file(path))`` works:
layer l (l = 0..L-1) stores ``f"{2*l}.weight"``: (n_{l+1}, n_l) and ``f"{2*l}.bias"``:
(n_{l+1},). The metadata holds the format name and version, the gpudnn version, the network
config as JSON and, when set, the class labels and the input standardisation; every file
:func:`encode_tensors` writes (models and checkpoints) also holds ``blake2b``, a digest of
its metadata and tensors, checked on reading (files written before it have none: unchecked).

Loading never unpickles or evaluates anything: every field is checked and any problem is a
:class:`~gpudnn.errors.ModelFileError` whose message starts with the file's path.

The pieces are shared with the checkpoints (:mod:`gpudnn.checkpoint`): ``encode_tensors``
and ``read_tensors`` write and read a safetensors file of any named tensors (F32, F64, I64,
U8) with the same checks, and ``write_atomic`` writes any file atomically.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import itertools
import json
import math
import os
import re
import secrets

import numpy as np

from .backend import get_backend
from .data import some_labels
from .errors import ConfigError, ModelFileError

FORMAT = "gpudnn"
FORMAT_VERSION = "1"
MAX_HEADER_BYTES = 16 * 1024 * 1024  # a header this large is not a model of ours
MAX_CLASSES_BYTES = 64 * 1024 * 1024  # bound on the restored classes_ array
_ST_DTYPES = {"float32": "F32", "float64": "F64"}  # numpy name -> safetensors name
# every dtype encode_tensors / read_tensors handle (checkpoints add integers and bytes)
TENSOR_DTYPES = {**_ST_DTYPES, "int64": "I64", "uint8": "U8"}
MAX_TENSOR_DIMS = 8
DIGEST = "blake2b"  # metadata key of the file's digest (see _digest)
_LABEL_KINDS = "biufUS"  # numpy dtype kinds classes_ may have (no objects)
_LABEL_DTYPE = re.compile(r"[<>|=]?[biufUS](?:0|[1-9][0-9]{0,8})")  # e.g. <i8, <U5


def _iter_tensor_names(n_layers):
    for l in range(n_layers):
        yield f"{2 * l}.weight"
        yield f"{2 * l}.bias"


def tensor_names(n_layers):
    """The tensor names of an L-layer network, in file order: 0.weight, 0.bias, 2.weight, ..."""
    return list(_iter_tensor_names(n_layers))


# --- save --------------------------------------------------------------------------------
def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _host(net, a):
    return net.backend.to_numpy(a) if net.backend.owns(a) else np.asarray(a)


def _metadata(net):
    """The ``__metadata__`` dict of ``net`` (every value a str)."""
    from . import __version__

    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "gpudnn_version": str(__version__),
        "config": json.dumps(net.config(), default=_json_default),
    }
    if getattr(net, "classes_", None) is not None:
        classes = _host(net, net.classes_)
        problem = classes_problem(classes, net.loss, net.sizes[-1])
        if problem:
            raise ValueError(f"cannot save: {problem}")
        values = classes.tolist()
        if classes.dtype.kind == "S":  # bytes labels: keep every byte, as latin-1 text
            values = _map(values, _text)
        meta["classes"] = json.dumps(values, default=_json_default)
        meta["classes_dtype"] = classes.dtype.str
    for key in SCALERS:
        if getattr(net, key, None) is not None:
            meta[key] = json.dumps(getattr(net, key).to_dict(), default=_json_default)
    if getattr(net, "data_columns", None) is not None:
        meta["data_columns"] = json.dumps(net.data_columns)
    return meta


def to_bytes(net):
    """The whole file for ``net`` as bytes: header length, header, tensor data."""
    return b"".join(_encode(net))


def _encode(net):
    """[header length + padded header, tensor bytes of 0.weight, 0.bias, 2.weight, ...].

    Raises ValueError when a weight is NaN or infinite (the file could not be loaded).
    """
    tensors = {}
    for l in range(net.n_layers):
        tensors[f"{2 * l}.weight"] = _host(net, net.W[l])  # (n_out, n_in), torch's Linear layout
        tensors[f"{2 * l}.bias"] = _host(net, net.b[l]).reshape(-1)  # (n_out, 1) -> (n_out,)
    for name, a in tensors.items():
        if not np.isfinite(a).all():
            raise ValueError(
                f"refusing to save: tensor {name} has non-finite values (did training "
                "diverge?); such a file could not be loaded"
            )
    return encode_tensors(tensors, _metadata(net))


def encode_tensors(tensors, metadata):
    """A safetensors file as a list of byte strings: [header length + padded header, the
    bytes of each tensor in order].

    tensors: {name: NumPy array} of the dtypes in ``TENSOR_DTYPES``, written little-endian,
    C order, back to back in the dict's order; metadata: {str: str}, the header's
    ``__metadata__``, to which the digest of the metadata and tensors is added (DIGEST,
    replacing any there; see :func:`_digest`).
    """
    metadata = {k: v for k, v in metadata.items() if k != DIGEST}
    header, parts, offset = {"__metadata__": metadata}, {}, 0
    for name, a in tensors.items():
        a = np.asarray(a)
        data = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()
        header[name] = {
            "dtype": TENSOR_DTYPES[a.dtype.name],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        parts[name] = (header[name]["dtype"], a.shape, data)
        offset += len(data)
    header["__metadata__"] = {**metadata, DIGEST: _digest(metadata, parts)}
    chunks = [data for _, _, data in parts.values()]
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)
    return [len(text).to_bytes(8, "little") + text, *chunks]


def _digest(metadata, tensors):
    """Hex BLAKE2b-256 of ``metadata`` ({str: str}, without the digest) and ``tensors``
    {name: (safetensors dtype, shape, bytes)}, taken in name order: it does not depend on
    where in the file each tensor lies or how the header is spaced, so a file another
    writer lays out differently (the safetensors package) with the same metadata and
    tensors has the same digest."""
    h = hashlib.blake2b(digest_size=32)
    h.update(json.dumps(metadata, sort_keys=True).encode())
    for name in sorted(tensors):
        dtype, shape, data = tensors[name]
        h.update(json.dumps([name, dtype, list(shape), len(data)]).encode())
        h.update(data)
    return h.hexdigest()


def _check_digest(meta, spans, data, fail):
    """Compare the digest the metadata ``meta`` holds with the file's content (the tensors
    ``spans`` {name: (begin, end, shape, dtype)} of ``data``). A file written before
    digests has none: it is not checked."""
    if DIGEST not in meta:
        return
    view = memoryview(data)
    tensors = {name: (TENSOR_DTYPES[dtype.name], shape, view[begin:end])
               for name, (begin, end, shape, dtype) in spans.items()}
    if _digest({k: v for k, v in meta.items() if k != DIGEST}, tensors) != meta[DIGEST]:
        fail("data damaged (digest mismatch): the file changed after it was written")


def _fsync_dir(directory):
    """fsync a directory so a rename in it is durable; a no-op where that is unsupported."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save(net, path):
    """Write ``net`` to ``path`` as a safetensors file, atomically.

    Tensors ``f"{2*l}.weight"``: (n_{l+1}, n_l) and ``f"{2*l}.bias"``: (n_{l+1},) in the
    network's dtype; metadata: format, format_version, gpudnn_version, config (JSON) and,
    when set, classes / classes_dtype, scaler and target_scaler (JSON). Written by :func:`write_atomic`,
    so a crash leaves either the old file or the new one. Raises ModelFileError (nothing
    written) if a weight is NaN or infinite.
    """
    path = os.fspath(path)
    try:
        parts = _encode(net)
    except ValueError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    write_atomic(path, parts)


def write_atomic(path, parts):
    """Write the byte strings ``parts`` to ``path`` so that a crash at any moment leaves
    either the old file (or none) or the whole new one, never a part.

    The bytes go to a temporary file ``.{name}.{pid}.{random}.tmp`` in the same directory,
    are flushed and fsync'ed, the file is renamed over ``path`` (``os.replace``, atomic)
    and the directory is fsync'ed so that the rename itself survives a power cut. On an
    error the temporary file is removed; after a kill it stays behind, never taking the
    place of ``path``. Any OSError (no such directory, disk full, ...) is a ModelFileError
    naming ``path``; so is a ``path`` that is a directory, found before anything is written.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ModelFileError(f"{path}: is a directory; name a file such as "
                             f"{os.path.join(path, 'model.safetensors')}")
    directory = os.path.dirname(os.path.abspath(path))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(
            directory, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        )
        try:
            fd = os.open(tmp, flags, 0o666)  # 0o666 & ~umask, like a plain open()
            break
        except FileExistsError:
            continue
        except OSError as exc:  # no such directory, no permission, ...
            raise ModelFileError(f"{path}: cannot write ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            for part in parts:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise ModelFileError(f"{path}: cannot write ({exc.strerror or exc})") from None
        raise
    _fsync_dir(directory)


# --- load --------------------------------------------------------------------------------
def _no_duplicates(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {k!r}")
        d[k] = v
    return d


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _read_header(f, size, fail):
    """Read and parse the header of an open file of ``size`` bytes; returns (dict, N)."""
    if size < 8:
        fail(f"file is {size} bytes, too short to be a model file (needs at least 8)")
    n = int.from_bytes(f.read(8), "little")
    if (n > MAX_HEADER_BYTES or 8 + n > size) and f.read(1) not in (b"{", b""):
        # e.g. a CSV or .npz given as the model: its first bytes read as an absurd length
        fail(f"not a safetensors file (its first 8 bytes, read as a header length, give {n}, "
             "and no JSON header follows them)")
    if n > MAX_HEADER_BYTES:
        fail(f"header length {n} is larger than the {MAX_HEADER_BYTES}-byte limit")
    if 8 + n > size:
        fail(f"header length {n} runs past the end of the {size}-byte file (truncated?)")
    raw = f.read(n)
    if len(raw) != n:
        fail("file shrank while being read")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        fail(f"header is not UTF-8 ({exc.reason} at byte {8 + exc.start})")
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:
        fail(f"header is not valid JSON ({exc})")
    if not isinstance(header, dict):
        fail(f"header is a JSON {type(header).__name__}, not an object")
    return header, n


def _read_metadata(header, fail):
    meta = header.get("__metadata__")
    if meta is None:
        fail("no __metadata__ in the header: not a gpudnn model file")
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        fail("__metadata__ must be an object of string values")
    if meta.get("format") != FORMAT:
        fail(f"metadata format is {meta.get('format')!r}, not {FORMAT!r}: not a gpudnn model")
    if meta.get("format_version") != FORMAT_VERSION:
        fail(
            f"unknown format_version {meta.get('format_version')!r}; this gpudnn reads "
            f"version {FORMAT_VERSION} (the file may come from a newer gpudnn)"
        )
    return meta


def _network_params():
    from .network import Network

    sig = inspect.signature(Network.__init__)
    return {k: p.default for k, p in sig.parameters.items() if k not in ("self", "backend")}


def _meta_json(meta, key, kind, fail):
    """The metadata string ``meta[key]`` parsed as JSON, which must give a ``kind``
    (dict: a JSON object, list: a JSON list)."""
    try:
        value = json.loads(meta[key])
    except (ValueError, RecursionError) as exc:
        fail(f"{key} is not valid JSON ({exc})")
    if not isinstance(value, kind):
        fail(f"{key} must be a JSON {'object' if kind is dict else 'list'}")
    return value


def _read_config(meta, fail):
    """Parse and type-check the config; returns (config dict, sizes tuple, numpy dtype)."""
    if "config" not in meta:
        fail("metadata has no config")
    config = _meta_json(meta, "config", dict, fail)
    known = _network_params()
    unknown = sorted(set(config) - set(known))
    if unknown:
        fail(f"config has unknown keys {unknown}")
    sizes = config.get("sizes")
    if not isinstance(sizes, list) or len(sizes) < 2 or not all(_is_int(n) for n in sizes):
        fail(f"config sizes must be a list of at least 2 integers, got {sizes!r}")
    if any(n < 1 for n in sizes):
        fail(f"config sizes must all be >= 1, got {sizes}")
    dtype = config.get("dtype", known.get("dtype"))
    if not isinstance(dtype, str) or dtype not in _ST_DTYPES:
        fail(f"config dtype must be one of {', '.join(_ST_DTYPES)}, got {dtype!r}")
    act = config.get("activation", "relu")
    if not isinstance(act, (str, list)) or not all(isinstance(a, str) for a in act):
        fail(f"config activation must be a name or a list of names, got {act!r}")
    for key in ("output", "init"):
        if key in config and not isinstance(config[key], str):
            fail(f"config {key} must be a string, got {config[key]!r}")
    if config.get("loss") is not None and not isinstance(config["loss"], str):
        fail(f"config loss must be a string or null, got {config['loss']!r}")
    seed = config.get("seed")
    if seed is not None and not (_is_int(seed) and seed >= 0):
        fail(f"config seed must be a non-negative integer or null, got {seed!r}")
    return config, tuple(sizes), np.dtype(dtype)


def _check_tensors(header, sizes, dtype, data_len, fail):
    """Check names, dtypes, shapes and offsets against the architecture.

    Returns ``{name: (begin, end, shape, dtype)}``.
    """
    L = len(sizes) - 1
    names = set(header) - {"__metadata__"}
    # Nothing of size L is built before L is known to match the tensors the header lists:
    # a short file must not make us build a million names from a long ``sizes`` list.
    if len(names) != 2 * L:
        missing = list(itertools.islice((n for n in _iter_tensor_names(L) if n not in names), 6))
        if missing:
            fail(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''} (L = {L})")
    extra = sorted(n for n in names if not _is_tensor_name(n, L))
    if extra:
        fail(f"unexpected tensors {extra[:5]}{' ...' if len(extra) > 5 else ''} (L = {L})")
    expected = {}
    for l, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        expected[f"{2 * l}.weight"] = (n_out, n_in)
        expected[f"{2 * l}.bias"] = (n_out,)
    missing = [n for n in expected if n not in names]
    if missing:  # unreachable: 2L names, none unexpected, so all present; kept as a guard
        fail(f"missing tensors {missing[:5]} (L = {L})")
    n_params = sum(n_out * (n_in + 1) for n_in, n_out in zip(sizes[:-1], sizes[1:]))
    if n_params * dtype.itemsize != data_len:
        fail(
            f"config sizes {list(sizes)} need {n_params} {dtype.name} parameters = "
            f"{n_params * dtype.itemsize} bytes of tensor data, but the file holds {data_len}"
            + (" (truncated?)" if data_len < n_params * dtype.itemsize else " (trailing bytes?)")
        )
    spans = {name: _check_span(name, header[name], data_len, fail, (shape, dtype))
             for name, shape in expected.items()}
    _check_tiling(spans, data_len, fail)
    return spans


def _check_tiling(spans, data_len, fail):
    """Check that the tensors' byte ranges ``{name: (begin, end, ...)}`` tile the data
    section [0, data_len) exactly: no overlap, no gap, nothing after the last."""
    pos = 0
    for name, (begin, end, *_) in sorted(spans.items(), key=lambda kv: kv[1][:2]):
        if begin != pos:
            what = "overlaps the previous tensor" if begin < pos else f"leaves a gap at {pos}"
            fail(f"tensor {name} starts at data offset {begin} and {what}")
        pos = end
    if pos != data_len:
        fail(f"tensor data ends at {pos} but the file has {data_len - pos} more bytes")


_TENSOR_NAME = re.compile(r"(0|[1-9][0-9]{0,17})\.(weight|bias)")  # no 5000-digit ints


def _is_tensor_name(name, n_layers):
    """Whether ``name`` is f"{2l}.weight" or f"{2l}.bias" for some l in 0..L-1."""
    m = _TENSOR_NAME.fullmatch(name)
    return m is not None and int(m.group(1)) % 2 == 0 and int(m.group(1)) < 2 * n_layers


def _leaves(x):
    if isinstance(x, list):
        for v in x:
            yield from _leaves(v)
    else:
        yield x


def _map(x, fn):
    return [_map(v, fn) for v in x] if isinstance(x, list) else fn(x)


def _fits(v, kind):
    """Whether the JSON value v may be an element of a label array of dtype kind ``kind``."""
    if isinstance(v, bool):
        return kind == "b"
    return isinstance(v, {"b": (), "i": int, "u": int, "f": (int, float), "U": str, "S": str}[kind])


def classes_problem(classes, loss, n_out):
    """What makes the array ``classes`` unfit as the class labels of a network of this
    ``loss`` and ``n_out`` output units (None: nothing). predict maps output unit i to
    ``classes[i]`` and fit and evaluate look labels up by binary search, so a classifier
    needs one label per softmax unit (two for one sigmoid unit), 1-D, distinct and in
    increasing order (as fit makes them), of a plain dtype; other models have none."""
    want = {"cross_entropy": n_out, "binary_cross_entropy": 2 if n_out == 1 else None}.get(loss)
    if want is None:
        return f"the model is not a classifier (loss {loss!r}, {n_out} output units): it has no classes"
    if classes.dtype.kind not in _LABEL_KINDS:
        return f"classes of dtype {classes.dtype} (labels must be numbers, strings or bytes)"
    if classes.ndim != 1 or len(classes) != want:
        each = "one per output unit" if want == n_out else "the two classes of one sigmoid unit"
        got = f"{len(classes)} label(s)" if classes.ndim == 1 else f"an array of shape {classes.shape}"
        return f"classes must be a list of {want} labels ({each}), got {got}"
    if not (classes[1:] > classes[:-1]).all():
        return f"classes must be distinct and in increasing order, got {some_labels(classes)}"
    return None


def _read_classes(meta, n_out, file_size, fail):
    """classes_ from the metadata, in its saved dtype (kinds b, i, u, f, U, S).

    At most max(n_out, 2) labels (a classifier's output has a unit per class, or one unit
    for two classes), taking at most 1 MiB + 16 bytes per byte of the file (and never more
    than MAX_CLASSES_BYTES): a short file cannot ask for a huge label array.
    """
    values = _meta_json(meta, "classes", list, fail)
    if "classes_dtype" not in meta:
        fail("metadata has classes but no classes_dtype")
    dtype_str = meta["classes_dtype"]
    # np.dtype parses some strings with ast.literal_eval: only hand it plain label dtypes
    if not _LABEL_DTYPE.fullmatch(dtype_str):
        fail(f"classes_dtype {dtype_str!r} is not a label dtype")
    try:
        dtype = np.dtype(dtype_str)
    except (TypeError, ValueError, SyntaxError) as exc:
        fail(f"classes_dtype {dtype_str!r} is not valid ({exc})")
    if dtype.kind not in _LABEL_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        fail(f"classes_dtype {dtype_str!r} is not a label dtype")
    leaves = list(_leaves(values))
    if len(leaves) > max(n_out, 2):
        fail(f"{len(leaves)} classes for an output layer of {n_out} unit(s)")
    if not all(_fits(v, dtype.kind) for v in leaves):
        fail(f"classes hold values that do not fit classes_dtype {dtype.str!r}")
    limit = min(MAX_CLASSES_BYTES, 2**20 + 16 * file_size)
    if dtype.itemsize * len(leaves) > limit:
        fail(
            f"classes of dtype {dtype.str!r} would take {dtype.itemsize * len(leaves)} bytes, "
            f"more than the {limit} allowed for a {file_size}-byte file"
        )
    try:
        if dtype.kind == "S":
            classes = np.array(_map(values, lambda s: s.encode("latin-1")), dtype=dtype)
        else:
            classes = np.array(values, dtype=dtype)
    except (ValueError, TypeError, OverflowError, UnicodeEncodeError) as exc:
        fail(f"classes do not fit classes_dtype {dtype.str!r} ({exc})")
    if dtype.kind in "US" and _map(classes.tolist(), _text) != values:
        fail(f"classes do not fit classes_dtype {dtype.str!r} (strings too long)")
    return classes


def _text(x):
    return x.decode("latin-1") if isinstance(x, bytes) else x


def _read_data_columns(meta, n_inputs, fail):
    """The training file's columns (gpudnn.data.read_dataset's ``columns``): {"names": None
    or n_inputs + 1 distinct strings, "target": the target's column, 0..n_inputs}."""
    d = _meta_json(meta, "data_columns", dict, fail)
    names, target = d.get("names"), d.get("target")
    if set(d) != {"names", "target"} or not isinstance(target, int) or isinstance(target, bool) \
            or not 0 <= target <= n_inputs:
        fail(f"data_columns must be {{'names', 'target'}} with target a column 0..{n_inputs}")
    if names is not None and (not isinstance(names, list) or len(names) != n_inputs + 1
                              or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names)):
        fail(f"data_columns names must be null or {n_inputs + 1} distinct strings (the inputs and the target)")
    return {"names": names, "target": target}


# the standardisations a model keeps: metadata key -> what each of its numbers is for
SCALERS = {"scaler": "input", "target_scaler": "output"}


def _read_scaler(meta, key, n, fail):
    """The Standardizer under metadata ``key``: n finite means and n nonzero scales."""
    from .data import Standardizer

    d = _meta_json(meta, key, dict, fail)
    try:
        for part in ("mean", "scale"):
            v = d.get(part, [])
            if not isinstance(v, list) or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in v
            ):
                raise TypeError(f"{part} must be a list of numbers")
        scaler = Standardizer.from_dict(d)
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        fail(f"{key} is not valid ({type(exc).__name__}: {exc})")
    for attr in ("mean", "scale"):
        a = getattr(scaler, attr, None)
        if a is None:
            continue
        if np.shape(a) != (n,) or not np.isfinite(a).all():
            fail(f"{key} {attr} must be {n} finite numbers (one per {SCALERS[key]})")
        if attr == "scale" and not (np.asarray(a) != 0).all():
            fail(f"{key} scale has zeros")
    return scaler


def _open(path, fail):
    """``path`` opened for binary reading; ``fail`` when it is missing or unreadable."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        fail("no such file")
    except OSError as exc:
        fail(f"cannot open ({exc.strerror or exc})")


def _read_data(f, data_len, fail):
    """The ``data_len`` bytes of tensor data after the header, which must end the file."""
    data = f.read(data_len)
    if len(data) != data_len or f.read(1):
        fail("file changed size while being read")
    return data


def _decode(data, spans, fail):
    """{name: array} from the tensor bytes, for checked ``spans`` {name: (begin, end,
    shape, dtype)}: each a copy in native byte order; floats must all be finite."""
    arrays = {}
    for name, (begin, end, shape, dtype) in spans.items():
        le = dtype.newbyteorder("<")
        a = np.frombuffer(data, dtype=le, count=(end - begin) // dtype.itemsize, offset=begin)
        if dtype.kind == "f" and not np.isfinite(a).all():
            fail(f"tensor {name} has NaN or infinite values")
        arrays[name] = a.reshape(shape).astype(dtype)  # native byte order, own memory
    return arrays


_DTYPE_OF = {st: np.dtype(name) for name, st in TENSOR_DTYPES.items()}  # "F32" -> float32


def _check_span(name, info, data_len, fail, expected=None):
    """(begin, end, shape, dtype) of the header entry ``info`` of a tensor of TENSOR_DTYPES,
    whose shape and dtype must be ``expected`` = (shape, dtype) when that is given."""
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        fail(f"tensor {name} must have exactly the keys dtype, shape, data_offsets")
    dtype = _DTYPE_OF.get(info["dtype"]) if isinstance(info["dtype"], str) else None
    if expected is not None and dtype != expected[1]:
        fail(f"tensor {name} has dtype {info['dtype']!r}, the config says {TENSOR_DTYPES[expected[1].name]!r}")
    if dtype is None:
        fail(f"tensor {name} has dtype {info['dtype']!r}; expected one of {', '.join(_DTYPE_OF)}")
    shape = info["shape"]
    if not (isinstance(shape, list) and len(shape) <= MAX_TENSOR_DIMS
            and all(_is_int(s) and s >= 0 for s in shape)):
        fail(f"tensor {name} shape must be a list of at most {MAX_TENSOR_DIMS} sizes >= 0, got {shape!r}")
    if expected is not None and tuple(shape) != expected[0]:
        fail(f"tensor {name} has shape {shape!r}, the architecture needs {list(expected[0])}")
    offs = info["data_offsets"]
    if not (isinstance(offs, list) and len(offs) == 2 and all(_is_int(o) for o in offs)):
        fail(f"tensor {name} data_offsets must be [begin, end], got {offs!r}")
    begin, end = offs
    if 0 <= begin <= end and end > data_len:
        fail(f"tensor {name} ends at data offset {end}, past the {data_len} bytes of tensor "
             "data in the file (truncated?)")
    if not 0 <= begin <= end <= data_len:
        fail(f"tensor {name} data_offsets {offs} are not 0 <= begin <= end <= {data_len}")
    nbytes = math.prod(shape) * dtype.itemsize
    if end - begin != nbytes:
        fail(f"tensor {name} spans {end - begin} bytes, its shape {shape} needs {nbytes}")
    return begin, end, tuple(shape), dtype


def _read_file(path, fail, check, data=None):
    """Read the safetensors file ``path``: its header, checked by ``check(header, size,
    data_len) -> (spans, info)`` (spans: {name: (begin, end, shape, dtype)}), then
    exactly the declared tensor bytes. Returns (info, {name: array}). With ``data``
    (bytes), the file's whole content read before (``path`` then only names it)."""
    with _open(path, fail) if data is None else io.BytesIO(data) as f:
        try:
            size = os.fstat(f.fileno()).st_size if data is None else len(data)
            header, n = _read_header(f, size, fail)
            meta = header.get("__metadata__") or {}  # check may take it out of header
            spans, info = check(header, size, size - 8 - n)
            data = _read_data(f, size - 8 - n, fail)
        except OSError as exc:
            fail(f"cannot read ({exc.strerror or exc})")
    _check_digest(meta, spans, data, fail)
    return info, _decode(data, spans, fail)


def read_tensors(path, fail, data=None):
    """Read any safetensors file of tensors of TENSOR_DTYPES (what :func:`encode_tensors`
    writes): returns (metadata {str: str}, {name: NumPy array}). With ``data``, parse these
    bytes, the file's content read before (a distributed resume: rank 0 reads, all parse).

    Checked as :func:`load` checks a model file, with no architecture to compare with: the
    header (size cap, within the file, UTF-8 JSON, no duplicate keys), every entry's dtype,
    shape and offsets, that the tensors tile the data exactly up to the end of the file, and
    that floats are finite. Any problem calls ``fail(message)``, which must raise.
    """

    def check(header, size, data_len):
        meta = header.pop("__metadata__", {})
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            fail("__metadata__ must be an object of string values")
        spans = {name: _check_span(name, info, data_len, fail) for name, info in header.items()}
        _check_tiling(spans, data_len, fail)
        return spans, meta

    return _read_file(path, fail, check, data)


def load(path, backend="auto", precision="saved"):
    """Read a model written by :func:`save` (or any safetensors file laid out the same way).

    ``precision``: "saved" (the mixed precision the model trained with, if any: its file
    records it) or a Network ``precision`` to use instead, such as None for passes in the
    master dtype (to predict on a machine without bfloat16 support, or in full precision).
    Returns a Network on ``backend`` ("auto", "numpy", "cupy") with ``W[l]``: (n_{l+1}, n_l)
    and ``b[l]``: (n_{l+1}, 1) bit-identical to the saved ones, ``classes_`` (NumPy array,
    its saved dtype), ``scaler`` and ``target_scaler`` restored. The header is read first and checked against
    a size cap and the file length, then exactly the declared tensor bytes. Raises
    :class:`ModelFileError` (message starting with the path) for a missing, truncated,
    malformed, inconsistent or hostile file; nothing in it is unpickled or evaluated.
    """
    be = get_backend(backend)  # a BackendError is about this machine, not the file
    path = os.fspath(path)

    def fail(msg):
        raise ModelFileError(f"{path}: {msg}")

    def check(header, size, data_len):
        meta = _read_metadata(header, fail)
        config, sizes, dtype = _read_config(meta, fail)
        spans = _check_tensors(header, sizes, dtype, data_len, fail)
        classes = _read_classes(meta, sizes[-1], size, fail) if "classes" in meta else None
        scalers = {key: _read_scaler(meta, key, sizes[0] if key == "scaler" else sizes[-1], fail)
                   for key in SCALERS if key in meta}
        columns = _read_data_columns(meta, sizes[0], fail) if "data_columns" in meta else None
        return spans, (config, classes, scalers, columns)

    (config, classes, scalers, columns), arrays = _read_file(path, fail, check)

    from .network import Network

    override = not (isinstance(precision, str) and precision == "saved")
    saved = config.get("precision")
    if override:
        config = {**config, "precision": precision}
    try:
        net = Network(**config, backend=be)
    except (ConfigError, TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError) and "precision" in str(exc):
            if override:  # the argument's fault, not the file's
                raise ConfigError(f"load(precision={precision!r}): {exc}") from None
            if saved is not None:  # bfloat16 without ml_dtypes, say: the weights are still usable
                fail(f"the model trained with precision={saved!r}, which cannot run here: {exc}; or "
                     "load it with precision=None (passes in its master weights' dtype; "
                     "gpudnn predict --full-precision)")
        fail(f"invalid config: {exc}")
    problem = None if classes is None else classes_problem(classes, net.loss, net.sizes[-1])
    if problem:
        fail(problem)
    for l in range(net.n_layers):
        net.W[l][...] = be.asarray(arrays[f"{2 * l}.weight"])
        net.b[l][...] = be.asarray(arrays[f"{2 * l}.bias"].reshape(-1, 1))
    if "target_scaler" in scalers and not net.is_regressor:
        fail("target_scaler is for regression models (identity output, mse)")
    net.classes_ = classes
    for key, scaler in scalers.items():
        setattr(net, key, scaler)
    net.data_columns = columns
    return net
