"""Numbers as the report writes them (study/rounding.py): expected texts written out by hand."""

from __future__ import annotations

import math

import pytest

from study import rounding


@pytest.mark.parametrize("v, dim, text", [
    ("0.9883738380592262", "lambda0", "0.988"),  # MLflow's text of a float
    (0.9883738380592262, "lambda0", "0.988"),
    ("0.359507900573786", "lambda0", "0.36"),  # no trailing zero
    ("0.005434782608695652", "lambda0", "0.00543"),  # significant digits, not decimals
    (0.0031622776601683794, "lr", "0.00316"),
    ("1.0", "surrogate_param", "1"),
    ("5.54251968222401", "surrogate_param", "5.54"),
    (1234.5, None, "1230"),  # plain digits up to a million
    (1.23456e-7, None, "1.23e-07"),
    ("0", "lambda0", "0"),
    ("3", None, "3"),  # an integer stays whole
    ("1,2", "branches", "1,2"),  # choices are text
    ("linear", "schedule", "linear"),
    ("4", "timesteps", "4"),
    ("007", None, "007"),  # a name that looks like a number
    ("None", None, "None"),
    (None, "lambda0", ""),
    ("", "lambda0", ""),
])
def test_a_configuration_value_has_three_significant_digits_and_a_choice_its_text(v, dim, text):
    assert rounding.value(v, dim) == text


def test_a_categorical_dimension_never_rounds_its_choice():
    # a choice is a name: two choices that differ past 3 digits stay two
    assert rounding.value("0.98837", "timesteps") == "0.98837"
    assert rounding.value("0.98837", "lambda0") == "0.988"


def test_more_digits_on_request():
    assert rounding.value("0.98837123", "lambda0", digits=5) == "0.98837"
    assert rounding.label({"lambda0": "0.98837123", "schedule": "cosine", "seed": "3"}, ["lambda0", "schedule", "tau"],
                          digits=4) == "lambda0=0.9884 schedule=cosine"


def test_metrics_accuracy_to_four_decimals_others_to_three_significant_digits():
    assert rounding.metric(0.975, "test_acc") == "0.9750"
    assert rounding.metric(2 / 3, "branch1_acc") == "0.6667"
    assert rounding.metric(0.20831234, "energy_uj") == "0.208"
    assert rounding.metric(181077.24444, "synops") == "181000"
    assert rounding.metric(None, "test_acc") == ""
    assert rounding.metric(math.nan, "test_acc") == "nan"
