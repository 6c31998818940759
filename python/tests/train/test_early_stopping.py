"""EarlyStopping on scripted metric sequences."""

import math

import pytest

from medclf.train.early_stopping import EarlyStopping


def replay(stopper, values):
    """Feed values until should_stop; return (improved flags, epochs trained)."""
    flags = []
    for value in values:
        flags.append(stopper.step(value))
        if stopper.should_stop:
            break
    return flags, len(flags)


def test_min_mode_stops_after_patience_bad_epochs():
    stopper = EarlyStopping(patience=2, mode="min")
    flags, trained = replay(stopper, [0.5, 0.4, 0.45, 0.41, 0.39, 0.3])
    assert flags == [True, True, False, False]
    assert trained == 4 and stopper.best == 0.4 and stopper.best_epoch == 2


def test_best_at_first_epoch_trains_exactly_patience_more_epochs():
    # The seed script stopped after patience - 1 further epochs in this case.
    stopper = EarlyStopping(patience=3, mode="min")
    flags, trained = replay(stopper, [0.3, 0.4, 0.5, 0.6, 0.2])
    assert flags == [True, False, False, False]
    assert trained == 4 and stopper.best_epoch == 1


def test_an_improvement_resets_the_count():
    stopper = EarlyStopping(patience=2, mode="min")
    flags, trained = replay(stopper, [1.0, 1.1, 0.9, 1.2, 0.8, 0.85, 0.86, 0.1])
    assert flags == [True, False, True, False, True, False, False]
    assert trained == 7 and stopper.best == 0.8 and stopper.best_epoch == 5


def test_min_delta_requires_a_large_enough_change():
    stopper = EarlyStopping(patience=2, mode="min", min_delta=1 / 10)
    flags, trained = replay(stopper, [1.0, 0.95, 0.85, 0.8])
    assert flags == [True, False, True, False]
    assert stopper.best == 0.85 and not stopper.should_stop


def test_max_mode_for_auc():
    stopper = EarlyStopping(patience=1, mode="max")
    flags, trained = replay(stopper, [0.6, 0.7, 0.7, 0.9])
    assert flags == [True, True, False]  # an equal value is not an improvement
    assert trained == 3 and stopper.best == 0.7


def test_nan_is_never_an_improvement():
    stopper = EarlyStopping(patience=2, mode="max")
    flags, _ = replay(stopper, [math.nan, 0.5, math.nan, math.nan])
    assert flags == [False, True, False, False]
    assert stopper.best == 0.5 and stopper.should_stop


def test_state_dict_round_trip_continues_identically():
    values = [0.5, 0.4, 0.45, 0.41, 0.39, 0.42, 0.43]
    reference = EarlyStopping(patience=2)
    expected, _ = replay(reference, values)
    first = EarlyStopping(patience=2)
    flags = [first.step(v) for v in values[:3]]
    second = EarlyStopping(patience=99, mode="max")
    second.load_state_dict(first.state_dict())
    rest, _ = replay(second, values[3:])
    assert flags + rest == expected
    assert second.state_dict() == reference.state_dict()


def test_invalid_arguments():
    with pytest.raises(ValueError):
        EarlyStopping(mode="up")
    with pytest.raises(ValueError):
        EarlyStopping(patience=0)
