"""The ``gpudnn`` command: ``train``, ``predict`` and ``info``.

    gpudnn train                       # the built-in digits, default recipe, prints test accuracy
    gpudnn train --data d.csv --layers 128,64 --epochs 20 --out model.safetensors
    gpudnn train --optimizer adam --schedule cosine --warmup-epochs 2 --dropout 0.2 \
                 --validation-split 0.1 --early-stopping 5 --plot curves.png --history h.csv
    gpudnn train --checkpoint ckpt --checkpoint-every 100 --resume   # run again after a kill
    mpiexec -n 4 gpudnn train --distributed ...   # data-parallel over 4 MPI ranks
    gpudnn predict --model model.safetensors --data new.csv
    gpudnn info

Mistakes (bad flags, bad data, bad model files) print one line on stderr and exit with
status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import math
import os
import platform
import sys

import numpy as np

from . import __version__
from .activations import HIDDEN_ACTIVATIONS, OUTPUT_ACTIVATIONS
from .backend import BACKENDS, cupy_status
from .errors import ConfigError, DataError, GpudnnError
from .kernels import numba_status
from .losses import LOSSES
from .network import DTYPES, INITS
from .optim import OPTIMIZERS
from .schedules import SCHEDULES

# the default recipe: >= 0.97 test accuracy on the digits for every seed we tried
DEFAULTS = dict(layers="256", optimizer="sgd", epochs=40, batch_size=32)
DATA_ON_DEVICE = {"auto": "auto", "yes": True, "no": False}  # --data-on-device: fit's data_on_device
# whole-number targets with more distinct values (or more than half the samples) are not
# taken for class labels unless --output softmax says so (see default_output)
MAX_CLASSES = 1000
# settings when no flag gives them: the recipe for SGD; the other optimizers' own defaults
RECIPES = {"sgd": dict(lr=0.05, momentum=0.9, weight_decay=1e-3)}
# a regression's (identity output, mse; its targets standardised): the squared error's
# gradients are not bounded as softmax's are, and lr 0.05 diverged on a linear target
REGRESSION_RECIPES = {"sgd": dict(lr=0.01, momentum=0.9, weight_decay=1e-3)}
# optimizer settings the command line has flags for: dest -> keyword
OPTIMIZER_FLAGS = ("lr", "momentum", "nesterov", "weight_decay", "betas", "eps", "alpha",
                   "trust_coefficient")




def _layers(text):
    """Hidden widths "128,64" -> [128, 64]; "" -> [] (no hidden layer)."""
    if not text.strip():
        return []
    sizes = []
    for t in text.split(","):
        try:
            sizes.append(int(t))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated widths like 128,64, got {text!r}"
            ) from None
    if any(n < 1 for n in sizes):
        raise argparse.ArgumentTypeError(f"every layer width must be >= 1, got {text!r}")
    return sizes


def _number(kind, *, above=None, at_least=None, below=None):
    """An argparse type: a finite ``kind`` (int or float) with ``value > above``,
    ``value >= at_least`` and ``value < below`` for the bounds given."""
    what = "an integer" if kind is int else "a number"

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        for ok, bound in ((above is None or value > above, f"> {above}"),
                          (at_least is None or value >= at_least, f">= {at_least}"),
                          (below is None or value < below, f"< {below}")):
            if not ok:
                raise argparse.ArgumentTypeError(f"must be {bound}, got {text!r}")
        return value

    return parse


def _betas(text):
    try:
        b1, b2 = (float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers like 0.9,0.999, got {text!r}")
    return b1, b2


def _writable(path):
    """An argparse type for an output file: its directory must exist, checked before any
    work is done, so a typo does not cost a whole training run."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{path} is a directory; name a file")
    if not os.path.isdir(directory):
        raise argparse.ArgumentTypeError(f"cannot write {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {path}: directory {directory} is not writable")
    return path


def _checkpoint_dir(path):
    """An argparse type for the checkpoint directory: not a file, its parent existing."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{path} is a file; name a directory")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"cannot make {path}: directory {parent} does not exist")
    return path


def _same_file(a, b):
    """Whether paths a and b name one file: os.path.samefile where both exist (links
    included), else the same real path (an output not written yet)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def check_distinct_paths(args, inputs, outputs):
    """ConfigError, before any work, when an output flag of ``outputs`` (dest names) names
    the same file as an input of ``inputs`` or as another output: writing it would destroy
    the user's file or the other output."""
    named = [(dest, getattr(args, dest)) for dest in (*inputs, *outputs) if getattr(args, dest)]
    for i, (dest, path) in enumerate(named):
        for other, other_path in named[:i]:
            if dest in outputs and _same_file(path, other_path):
                raise ConfigError(f"--{dest} {path} is the same file as --{other} {other_path}; "
                                  "name another file")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``gpudnn train: error: ...`` and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser():
    p = _Parser(prog="gpudnn", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=f"gpudnn {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a network (default: the built-in digits)")
    t.add_argument("--data", help=".csv (target last unless --target), .npz (X, y) or .npy")
    t.add_argument("--target", help="column name (.csv) or index (.csv, .npy) of the target")
    t.add_argument("--layers", type=_layers, default=_layers(DEFAULTS["layers"]),
                   help=f"hidden widths, comma-separated (default {DEFAULTS['layers']})")
    t.add_argument("--activation", choices=HIDDEN_ACTIVATIONS, default="relu")
    t.add_argument("--output", choices=OUTPUT_ACTIVATIONS,
                   help="output activation (default: softmax for class labels, identity for values)")
    t.add_argument("--loss", choices=tuple(LOSSES), help="default: the output's natural loss")
    t.add_argument("--init", choices=INITS, default="he", help="weight initialisation (default he)")
    t.add_argument("--dropout", type=_number(float, at_least=0, below=1), default=0.0, help="dropout rate of the hidden layers")
    o = t.add_argument_group("optimizer (unset settings: the optimizer's defaults; for sgd "
                             f"lr {RECIPES['sgd']['lr']}, momentum {RECIPES['sgd']['momentum']}, "
                             f"weight decay {RECIPES['sgd']['weight_decay']})")
    o.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default=DEFAULTS["optimizer"])
    o.add_argument("--lr", type=_number(float, above=0))
    o.add_argument("--momentum", type=_number(float, at_least=0, below=1), help="sgd, rmsprop, lars")
    o.add_argument("--nesterov", action="store_true", default=None, help="sgd, lars")
    o.add_argument("--weight-decay", type=_number(float, at_least=0),
                   help="L2 for sgd, adam, rmsprop, lars; decoupled for adamw, lamb")
    o.add_argument("--betas", type=_betas, metavar="B1,B2", help="adam, adamw, lamb")
    o.add_argument("--eps", type=_number(float, above=0), help="adam, adamw, lamb, rmsprop")
    o.add_argument("--alpha", type=_number(float, at_least=0, below=1), help="rmsprop's smoothing constant")
    o.add_argument("--trust-coefficient", type=_number(float, above=0), help="lars")
    o.add_argument("--clip-norm", type=_number(float, above=0), help="clip gradients to this global norm")
    sch = t.add_argument_group("learning-rate schedule (epochs are turned into steps)")
    sch.add_argument("--schedule", choices=tuple(SCHEDULES), default="constant")
    sch.add_argument("--step-epochs", type=_number(int, above=0),
                   help="step: multiply the lr by --gamma every this many epochs (default 10)")
    sch.add_argument("--gamma", type=_number(float, above=0),
                   help="step: factor per step (default 0.1); exponential: per epoch (default 0.95)")
    sch.add_argument("--min-lr", type=_number(float, at_least=0), help="cosine: the final lr (default 0)")
    sch.add_argument("--warmup-epochs", type=_number(int, above=0), help="linear warm-up before the schedule")
    sch.add_argument("--plateau", type=_number(int, above=0), metavar="PATIENCE",
                   help="also multiply the lr by --plateau-factor after PATIENCE epochs without "
                        "improvement of the validation (else training) loss")
    sch.add_argument("--plateau-factor", type=_number(float, above=0, below=1),
                     help="with --plateau: the factor (default 0.1)")
    sch.add_argument("--scale-lr", type=_number(int, above=0), metavar="BASE_BATCH",
                   help="linear scaling rule: lr × batch size / BASE_BATCH")
    t.add_argument("--epochs", type=_number(int, above=0), default=DEFAULTS["epochs"])
    t.add_argument("--batch-size", type=_number(int, above=0), default=DEFAULTS["batch_size"])
    t.add_argument("--micro-batches", type=_number(int, above=0), default=1,
                   help="accumulate each batch's gradient over this many micro-batches")
    t.add_argument("--validation-split", type=_number(float, above=0, below=1),
                   help="hold out this fraction of the training split for validation curves")
    t.add_argument("--early-stopping", type=_number(int, above=0), metavar="PATIENCE",
                   help="stop after PATIENCE epochs without improvement of the validation (else "
                        "training) loss and keep the best epoch's weights")
    t.add_argument("--test-size", type=_number(float, above=0, below=1), default=0.2, help="held-out fraction (default 0.2)")
    t.add_argument("--no-standardize", action="store_true",
                   help="do not standardise the features (nor a regression's targets)")
    t.add_argument("--backend", choices=BACKENDS, default="auto")
    t.add_argument("--data-on-device", choices=tuple(DATA_ON_DEVICE), default="auto",
                   help="where the training set lives: yes = on the device, no = in host memory "
                        "with each batch copied while the previous one trains (pinned, on a "
                        "GPU); auto (default): on the device when it fits in free GPU memory")
    t.add_argument("--dtype", choices=DTYPES, default="float32")
    t.add_argument("--precision", choices=("float16", "bfloat16", "tf32", "float32", "float64"),
                   help="compute dtype: float16 = mixed precision (float16 passes, --dtype master "
                        "weights, dynamic loss scaling); tf32 = float32 with TF32 tensor-core "
                        "matmuls (CuPy, compute capability 8.0+); default: --dtype")
    t.add_argument("--low-memory", action="store_true",
                   help="bound the backward pass's scratch to an eighth of the widest layer "
                        "(larger batches fit; see Network(low_memory=True))")
    t.add_argument("--seed", type=_number(int, at_least=0), default=0)
    t.add_argument("--out", metavar="MODEL", type=_writable,
                   help="write the trained model (safetensors)")
    t.add_argument("--history", metavar="FILE", type=_writable, help="write the per-epoch history (.csv or .json)")
    t.add_argument("--plot", metavar="IMAGE", type=_writable, help="plot loss and accuracy curves (.png, .pdf, .svg)")
    t.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    t.add_argument("--distributed", action="store_true",
                   help="train data-parallel over the ranks of an MPI job, the same training "
                        "as one process: mpiexec -n N gpudnn train --distributed ...")
    c = t.add_argument_group("checkpoints (see README, Checkpoints and resume)")
    c.add_argument("--checkpoint", metavar="DIR", type=_checkpoint_dir,
                   help="write checkpoints to DIR (made if missing) at the end of every epoch")
    c.add_argument("--checkpoint-every", type=_number(int, above=0), metavar="STEPS",
                   help="also write one every STEPS optimizer steps")
    c.add_argument("--keep-checkpoints", type=_number(int, above=0), default=3, metavar="K",
                   help="keep the newest K checkpoints (default 3)")
    c.add_argument("--resume", action="store_true",
                   help="go on from the newest checkpoint in DIR (a fresh start when there is none)")

    pr = sub.add_parser("predict", help="predict with a saved model")
    pr.add_argument("--model", required=True)
    pr.add_argument("--data", required=True, help=".csv, .npz (array X) or .npy of inputs")
    pr.add_argument("--backend", choices=BACKENDS, default="auto")
    pr.add_argument("--full-precision", action="store_true",
                    help="a model trained in mixed precision predicts with passes in its master "
                         "weights' dtype (default: the precision it trained with)")
    pr.add_argument("--out", type=_writable,
                    help="write predictions here (one per line) instead of stdout")

    sub.add_parser("info", help="version, backends, devices and BLAS")
    for s in sub.choices.values():
        # SUPPRESS: a subcommand without --debug keeps the value `gpudnn --debug ...` set
        s.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks")
    return p


def default_output(y):
    """The output activation when --output is not given: softmax for class labels (text,
    or whole numbers with at most MAX_CLASSES distinct values and no more than half as
    many as samples), identity for other numbers and for 2-D targets. Whole numbers with
    more distinct values may be either: a ConfigError asks the user to say which."""
    if y.ndim != 1 or y.dtype.kind not in "biuUS":
        return "identity"
    k = len(np.unique(y))
    if y.dtype.kind in "iu" and (k > MAX_CLASSES or 2 * k > len(y)):
        raise ConfigError(
            f"the target has {k} distinct whole-number values in {len(y)} samples, too many to "
            f"take for class labels (at most {MAX_CLASSES} and half the samples): for regression "
            "pass --output identity, for a classifier all the same --output softmax")
    return "softmax"


def make_optimizer(args, steps_per_epoch, regression=False):
    """The optimizer the flags ask for, its lr a schedule when they ask for one.

    Settings left unset take RECIPES[optimizer] (REGRESSION_RECIPES for a ``regression``),
    else the optimizer's own defaults; a flag the chosen optimizer has no keyword for is a
    ConfigError.
    """
    from . import schedules

    cls = OPTIMIZERS[args.optimizer]
    accepted = inspect.signature(cls).parameters
    kwargs = dict((REGRESSION_RECIPES if regression else RECIPES).get(args.optimizer, {}))
    for name in OPTIMIZER_FLAGS:
        value = getattr(args, name)
        if value is None:
            continue
        if name not in accepted:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} does not apply to --optimizer {args.optimizer}")
        kwargs[name] = value
    lr = kwargs.get("lr", accepted["lr"].default)
    if args.scale_lr:
        lr = schedules.linear_scaling(lr, args.batch_size, args.scale_lr)
    for flag, value, schedules_of_flag in (("--step-epochs", args.step_epochs, ("step",)),
                                           ("--gamma", args.gamma, ("step", "exponential")),
                                           ("--min-lr", args.min_lr, ("cosine",))):
        if value is not None and args.schedule not in schedules_of_flag:  # refused, not ignored
            raise ConfigError(f"{flag} applies to --schedule {' or '.join(schedules_of_flag)}, "
                              f"not {args.schedule}")
    if args.plateau_factor is not None and not args.plateau:
        raise ConfigError("--plateau-factor needs --plateau PATIENCE")
    warmup = args.warmup_epochs or 0
    if warmup >= args.epochs:  # for every schedule: the lr would never reach --lr
        raise ConfigError(f"--warmup-epochs {warmup} leaves no epochs of --epochs {args.epochs} "
                          f"for the {args.schedule} schedule; warm up for fewer epochs")
    if args.schedule == "step":
        lr = schedules.StepDecay(lr, (args.step_epochs or 10) * steps_per_epoch, args.gamma or 0.1)
    elif args.schedule == "exponential":
        lr = schedules.ExponentialDecay(lr, args.gamma or 0.95, step_size=steps_per_epoch)
    elif args.schedule == "cosine":
        lr = schedules.CosineDecay(lr, (args.epochs - warmup) * steps_per_epoch, args.min_lr or 0.0)
    if warmup:
        lr = schedules.LinearWarmup(lr, warmup * steps_per_epoch)
    if args.plateau:
        lr = schedules.ReduceLROnPlateau(lr, patience=args.plateau, factor=args.plateau_factor or 0.1)
    kwargs["lr"] = lr
    return cls(**kwargs)


def _split(X, y, fraction, seed, stratify, flag):
    """train_test_split, its DataError (a part left empty) naming the flag."""
    from .data import train_test_split

    try:
        return train_test_split(X, y, test_size=fraction, seed=seed, stratify=stratify)
    except DataError as exc:
        raise ConfigError(f"{flag} {fraction}: {exc}") from None


def cmd_train(args, distributed=None):
    from .callbacks import EarlyStopping
    from .data import load_digits, read_dataset
    from .history import check_history_path, check_plot_path, plot_history, save_history
    from .network import Network

    if distributed is None:
        from .distributed import launched_ranks

        ranks = launched_ranks()
        if ranks > 1:  # (a sweep giving each process its own outputs is legitimate)
            print(f"gpudnn train: warning: this process is one of {ranks} started by an "
                  "MPI launcher (mpiexec) without --distributed: each trains the whole model alone; "
                  "add --distributed to share the batches", file=sys.stderr, flush=True)
    check_distinct_paths(args, ("data",), ("out", "history", "plot", "checkpoint"))
    if (args.checkpoint_every or args.resume) and not args.checkpoint:
        raise ConfigError("--checkpoint-every and --resume need --checkpoint DIR")
    if args.checkpoint and not args.distributed:  # before any data is read (fit checks again,
        # holding the directory; with ranks only rank 0 does, so that all learn the same outcome)
        from .checkpoint import probe_directory

        probe_directory(args.checkpoint, args.resume)
    if args.target is not None and not args.data:
        raise ConfigError("--target needs --data FILE (the built-in digits come with their labels)")
    if args.history:
        check_history_path(args.history)
    if args.plot:
        check_plot_path(args.plot)
    if args.data:
        X, y, columns = read_dataset(args.data, target=args.target, columns=True)
        name = args.data
    else:
        X, y = load_digits()
        y = y.astype(np.int64)
        name = "the built-in digits (1797 8x8 images, 10 classes)"
        columns = None
    output = args.output or default_output(y)
    classify = output == "softmax" or (output == "sigmoid" and args.loss != "mse")
    if classify and y.ndim == 1:  # one unit per distinct label, which fit keeps as classes_
        n_classes = len(np.unique(y))
        if output == "sigmoid" and n_classes > 2:
            raise ConfigError(
                f"--output sigmoid is for two classes (or 0/1 multi-label targets of shape "
                f"(N, k)), the target has {n_classes} classes: use --output softmax")
        n_out = max(n_classes, 2) if output == "softmax" else 1  # one class: fit names it
    else:
        n_out = 1 if y.ndim == 1 else y.shape[1]
    # stratified for a classifier only: a regression's whole-number targets are values
    X_train, X_test, y_train, y_test = _split(X, y, args.test_size, args.seed, classify, "--test-size")
    validation = None
    if args.validation_split:
        X_train, X_val, y_train, y_val = _split(X_train, y_train, args.validation_split, args.seed,
                                                classify, "--validation-split")
        validation = (X_val, y_val)
    net = Network(
        [X.shape[1], *args.layers, n_out],
        activation=args.activation,
        output=output,
        loss=args.loss,
        init=args.init,
        dtype=args.dtype,
        precision=args.precision,
        backend=args.backend,
        seed=args.seed,
        dropout=args.dropout,
        low_memory=args.low_memory,
    )
    net.data_columns = columns  # so that gpudnn predict finds the features of such a file
    opt = make_optimizer(args, steps_per_epoch=-(-len(X_train) // args.batch_size), regression=net.is_regressor)
    callbacks = [EarlyStopping(patience=args.early_stopping)] if args.early_stopping else []
    held = f" / {len(validation[0])} validation" if validation else ""
    print(f"data: {name}: {len(X_train)} training{held} / {len(X_test)} test samples")
    print(f"model: {net} on {net.backend.describe()}; {net.n_params} parameters; {opt!r}")
    history = net.fit(
        X_train,
        y_train,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=opt,
        validation_data=validation,
        callbacks=callbacks,
        clip_norm=args.clip_norm,
        micro_batches=args.micro_batches,
        verbose=0 if args.quiet else 1,
        standardize=not args.no_standardize,
        # a regression's targets too: raw targets in the thousands diverge at these lrs
        standardize_targets=net.is_regressor and not args.no_standardize,
        checkpoint=args.checkpoint,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        resume=args.resume,
        data_on_device=DATA_ON_DEVICE[args.data_on_device],
        distributed=distributed,
    )
    if callbacks and callbacks[0].stopped_epoch is not None:
        stop = callbacks[0]
        print(f"early stopping after epoch {stop.stopped_epoch + 1}; kept epoch {stop.best_epoch + 1}")
    writes = distributed is None or distributed.is_root  # rank 0 alone writes files
    if args.history and writes:
        save_history(history, args.history)
        print(f"history written to {args.history}")
    if args.plot and writes:
        title = f"{'-'.join(map(str, net.sizes))} {args.activation}, {args.optimizer}"
        title += f", {args.schedule} lr" + (f", dropout {args.dropout}" if args.dropout else "")
        plot_history(history, args.plot, title=title)
        print(f"curves plotted to {args.plot}")
    if args.out and writes:
        net.save(args.out)
        print(f"model written to {args.out}")
    scores = net.evaluate(X_test, y_test)
    units = " (standardised targets)" if net.target_scaler is not None else ""
    print(f"test loss: {scores['loss']:.4f}{units}")
    if "accuracy" in scores:
        print(f"test accuracy: {scores['accuracy']:.4f}")
    elif net.loss == "mse":  # a regression: the error in the targets' own units
        err = np.asarray(net.predict(X_test), np.float64).reshape(len(y_test), -1) - \
            np.asarray(y_test, np.float64).reshape(len(y_test), -1)
        print(f"test RMSE: {float(np.sqrt(np.mean(err ** 2))):.4g} (in the targets' units)")
    return 0


def cmd_predict(args):
    from .data import read_features
    from .io import load

    check_distinct_paths(args, ("model", "data"), ("out",))
    net = load(args.model, backend=args.backend, precision=None if args.full_precision else "saved")
    X = read_features(args.data, n_features=net.sizes[0], columns=net.data_columns)
    pred = net.predict(X)
    lines = [" ".join(str(v) for v in np.atleast_1d(row)) for row in pred]
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


def blas_info():
    """The BLAS NumPy was built with, and its threads where threadpoolctl is installed."""
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        text = f"{blas.get('name')} {blas.get('version', '')}".strip()
    except Exception:  # NumPy < 1.25 has no mode="dicts"
        text = "unknown"
    try:
        from threadpoolctl import threadpool_info

        pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        if pools:
            text += f" ({pools[0].get('internal_api')}, {pools[0].get('num_threads')} threads)"
    except ImportError:
        pass
    return text


def cmd_info(args):
    print(f"gpudnn {__version__}")
    print(f"python {platform.python_version()} on {platform.machine()} ({platform.system()})")
    print(f"numpy {np.__version__}, BLAS: {blas_info()}")
    cupy, reason = cupy_status()
    if cupy is None:
        print(f"cupy: not usable: {reason}")
    else:
        print(f"cupy {cupy.__version__}, CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}")
        for i in range(cupy.cuda.runtime.getDeviceCount()):
            props = cupy.cuda.runtime.getDeviceProperties(i)
            name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            print(f"  GPU {i}: {name}, {props['totalGlobalMem'] / 2**30:.1f} GiB")
    print(f"backend='auto' picks: {'cupy' if cupy is not None else 'numpy'}")
    ok, text = numba_status()
    print(f"CPU kernels: {'fused, ' if ok else 'generic: '}{text}")
    return 0


def cmd_train_distributed(args):
    """``cmd_train`` as one rank of ``mpiexec -n N gpudnn train --distributed``: rank 0 alone
    prints and writes files; an error on any rank stops every rank with the same error,
    which rank 0 alone reports (a rank that fails alone mid-training aborts the job)."""
    from .distributed import DataParallel

    dp = DataParallel(device=None if args.backend == "numpy" else "auto")  # no CUDA context a rank for CPU work
    quiet = contextlib.nullcontext() if dp.is_root else contextlib.redirect_stdout(io.StringIO())
    try:
        with dp.guard("training run"), quiet:
            print(f"distributed: {dp.size} MPI ranks share every batch of {args.batch_size}")
            return cmd_train(args, distributed=dp)
    except Exception as exc:
        if dp.is_root:
            raise
        return _status(exc)


COMMANDS = {"train": cmd_train, "predict": cmd_predict, "info": cmd_info}


def _status(exc):
    """The exit status of an error: 2 for the user's mistakes (flags, data, files, memory),
    1 for a bug in gpudnn."""
    return 2 if isinstance(exc, (GpudnnError, OSError, MemoryError)) else 1


def _one_line(exc):
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv=None):
    """Run the command; mistakes give one line on stderr and status 2 (1 for a bug in
    gpudnn), the traceback only with ``--debug``."""
    args = build_parser().parse_args(argv)
    command = COMMANDS[args.command]
    if getattr(args, "distributed", False):
        command = cmd_train_distributed
    try:
        return command(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        prefix = f"gpudnn {args.command}: error:"
        if isinstance(exc, MemoryError):  # (the training set's names its own remedy)
            advice = "" if "--data-on-device" in str(exc) else "; try smaller --layers or --batch-size"
            print(f"{prefix} out of memory ({_one_line(exc)}){advice}", file=sys.stderr)
        elif _status(exc) == 2:
            print(f"{prefix} {_one_line(exc)}", file=sys.stderr)
        else:
            print(f"{prefix} internal error, {type(exc).__name__}: {_one_line(exc)} "
                  "(rerun with --debug for the traceback and please report it)", file=sys.stderr)
        return _status(exc)


if __name__ == "__main__":
    sys.exit(main())
