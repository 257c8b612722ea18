"""Budget strings: every unit, the relative ones resolved against a layer table, and typos."""

from __future__ import annotations

import pytest

from infoq_deploy.allocate.budgets import Budget, parse_budget, resolve_budget
from infoq_deploy.allocate.costs import fp32_size_bytes
from infoq_deploy.core.errors import UserError
from infoq_deploy.core.targets import load_target
from infoq_deploy.importing.layers import Layer

KiB, MiB, GiB = 1024, 1024**2, 1024**3

VALID = [
    ("4.5MB", "size", 4.5 * MiB),
    ("4.5 MB", "size", 4.5 * MiB),
    (" 4.5MB ", "size", 4.5 * MiB),
    ("2MiB", "size", 2 * MiB),
    ("300KB", "size", 300 * KiB),
    ("300kB", "size", 300 * KiB),
    ("300KiB", "size", 300 * KiB),
    ("1GB", "size", GiB),
    ("0.5GiB", "size", 0.5 * GiB),
    ("512B", "size", 512),
    ("23GBOPs", "bitops", 23e9),
    ("23 GBOPS", "bitops", 23e9),
    ("23.04 G-BitOps", "bitops", 23.04e9),
    ("23GBitOps", "bitops", 23e9),
    ("500MBOPs", "bitops", 500e6),
    ("1.5TBOPs", "bitops", 1.5e12),
    ("100KBOPs", "bitops", 100e3),
    ("100kBOPs", "bitops", 100e3),
    ("7e9BOPs", "bitops", 7e9),
    ("2.5ms", "latency", 2.5),
    ("800us", "latency", 0.8),
    ("800µs", "latency", 0.8),
    ("0.01s", "latency", 10.0),
    ("12x", "compression", 12.0),
    ("12.5 X", "compression", 12.5),
    ("3.5bit", "wbits", 3.5),
    ("4 bits", "wbits", 4.0),
]


@pytest.mark.parametrize("text,metric,limit", VALID)
def test_valid(text, metric, limit):
    b = parse_budget(text)
    assert b.text == text and b.metric == metric
    assert b.limit == pytest.approx(limit, rel=1e-12)


INVALID = ["4.5MBB", "4.5", "abcMB", "-3MB", "0MB", "0x", "MB", "", "4.5 M B", "nanMB", "infMB", "4.5mbytes",
           "3.5 bitz", "2.5 msec", "4,5MB", "4.5MB 3x", "1e999MB"]


@pytest.mark.parametrize("text", INVALID)
def test_typos_list_the_accepted_units(text):
    with pytest.raises(UserError) as e:
        parse_budget(text)
    msg = str(e.value)
    for example in ("4.5MB", "23GBOPs", "2.5ms", "12x", "3.5bit"):
        assert example in msg


@pytest.mark.parametrize("text", ["4.5Mb", "4.5mb", "300kb", "300Kb", "2Mib", "1Gb"])
def test_lower_case_b_is_bits_never_bytes(text):
    with pytest.raises(UserError) as e:
        parse_budget(text)
    assert "bits" in str(e.value)


def layers():
    return [
        Layer("a", "conv", 432, 16, 442368, (3, 32, 32), (16, 32, 32), 0),
        Layer("b", "linear", 160, 10, 160, (16,), (10,), 1),
    ]


def test_compression_resolves_to_bytes():
    b = resolve_budget(parse_budget("12x"), layers(), load_target("fpga-int"))
    assert b.metric == "size" and b.unit == "x"
    assert b.limit == pytest.approx(fp32_size_bytes(layers()) / 12)


def test_absolute_and_wbits_budgets_pass_through():
    t = load_target("mcu-int")
    for text in ("4.5MB", "3.5bit"):
        b = parse_budget(text)
        assert resolve_budget(b, layers(), t) == b


@pytest.mark.parametrize(
    "target,text", [("fpga-int", "2.5ms"), ("mcu-int", "23GBOPs"), ("edge-cpu-ort", "23GBOPs")]
)
def test_budget_the_target_does_not_report(target, text):
    with pytest.raises(UserError) as e:
        resolve_budget(parse_budget(text), layers(), load_target(target))
    assert text in str(e.value) and target in str(e.value)


def test_budget_is_a_frozen_dataclass():
    b = parse_budget("4.5MB")
    assert isinstance(b, Budget)
    with pytest.raises(AttributeError):
        b.limit = 1.0
