"""The shared number checks: NumPy scalars are numbers, bools and strings are not."""

import numpy as np
import pytest

import gpudnn
from gpudnn import checks, schedules
from gpudnn.amp import LossScaler
from gpudnn.callbacks import EarlyStopping
from gpudnn.errors import ConfigError


@pytest.mark.parametrize("value", [0.1, np.float32(0.1), np.float64(0.1), 1, np.int64(1)])
def test_numpy_and_python_numbers_are_accepted(value):
    assert checks.positive("x", value) == pytest.approx(float(value))


@pytest.mark.parametrize("value", [True, "0.1", None, float("nan"), float("inf"), -1, 0, [1]])
def test_non_numbers_and_out_of_range_are_refused(value):
    with pytest.raises(ConfigError, match="x must be"):
        checks.positive("x", value)


@pytest.mark.parametrize("value", [3, np.int64(3)])
def test_positive_int(value):
    assert checks.positive_int("n", value) == 3


@pytest.mark.parametrize("value", [3.0, True, 0, -2, "3"])
def test_positive_int_refuses(value):
    with pytest.raises(ConfigError, match="n must be a positive integer"):
        checks.positive_int("n", value)


@pytest.mark.parametrize(
    "make",
    [lambda: schedules.StepDecay(0.1, float("inf")), lambda: gpudnn.optim.SGD(lr=True),
     lambda: gpudnn.optim.SGD(lr="0.1"), lambda: gpudnn.Network([2, 2], loss=["mse"]),
     lambda: gpudnn.Network([2, 3, 2], dropout="0.5"), lambda: gpudnn.Network([2, 3, 2], dropout=1.0)],
    ids=["step-inf", "lr-bool", "lr-str", "loss-list", "dropout-str", "dropout-1"],
)
def test_every_module_refuses_with_a_config_error(make):
    with pytest.raises(ConfigError):
        make()


def test_numpy_scalars_work_everywhere():
    assert gpudnn.Network([2, 3, 2], dropout=np.float32(0.25)).dropout == (0.25,)
    assert schedules.CosineDecay(0.1, np.int64(100))(0) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "make",
    [lambda: LossScaler(init_scale=float("inf")),
     lambda: LossScaler(growth_interval=2.0),
     lambda: EarlyStopping(patience=3.0),
     lambda: schedules.ReduceLROnPlateau(0.1, cooldown=1.5),
     lambda: schedules.ReduceLROnPlateau(0.1, min_lr=float("nan"))],
    ids=["scale-inf", "interval-float", "patience-float", "cooldown-float", "min_lr-nan"],
)
def test_settings_of_the_scaler_callbacks_and_plateau_use_the_same_checks(make):
    with pytest.raises(ConfigError):
        make()


def test_numpy_integers_are_integers_there_too():
    assert LossScaler(growth_interval=np.int64(5)).growth_interval == 5
    assert EarlyStopping(patience=np.int32(2)).patience == 2
    assert schedules.ReduceLROnPlateau(0.1, cooldown=np.int64(0)).cooldown == 0
