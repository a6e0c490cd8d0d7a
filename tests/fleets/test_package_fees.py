"""`ledger verify` checks package fees: one per activated device, of its product's fee, to its
maker; none without a device."""

from __future__ import annotations

from datetime import UTC, datetime

from tokenport.billing.invoices import product_lines
from tokenport.billing.ledger import fee_tx, package_tx, package_tx_id
from tokenport.billing.ledger_verify import package_problems

AT = datetime(2026, 12, 6, tzinfo=UTC)


def test_each_activated_device_has_its_fee_once():
    a, b = package_tx_id("TOY-1", "flt_1"), package_tx_id("TOY-2", "flt_1")
    assert a != b and a == package_tx_id("TOY-1", "flt_1") and a.startswith("pkg_")
    expected = {a: ("ten_1", 1_500_000_000), b: ("ten_1", 1_500_000_000)}
    txs = [package_tx(a, "ten_1", 1_500_000_000, AT), package_tx(b, "ten_1", 1_500_000_000, AT)]
    assert package_problems([*txs, fee_tx("fee_1", "ten_1", 5, AT)], expected) == []
    assert package_problems(txs[:1], expected) == [f"package fee {b} of an activated device is missing"]
    wrong = [txs[0], package_tx(b, "ten_2", 1_000_000_000, AT)]
    assert package_problems(wrong, expected) == [
        f"package transaction {b} charges 1000000000 to ten_2, not 1500000000 to ten_1"
    ]
    stray = package_tx("pkg_stray", "ten_1", 7, AT)
    assert package_problems([*txs, stray], expected) == [
        "package transaction pkg_stray belongs to no activated device"
    ]


def test_product_lines_count_activations_fees_and_tokens_by_model():
    rows = [
        {"product_id": "prd_1", "model": "toy-chat", "prompt_tokens": 10, "completion_tokens": 20},
        {"product_id": "prd_1", "model": "toy-chat", "prompt_tokens": 5, "completion_tokens": 1},
        {"product_id": None, "model": "toy-chat", "prompt_tokens": 99, "completion_tokens": 99},
        {"product_id": "prd_2", "model": None, "prompt_tokens": 0, "completion_tokens": 0},
    ]
    lines = product_lines(
        {"prd_1": "BEAR", "prd_2": "OWL"}, [("prd_1", 100), ("prd_1", 100), ("prd_2", 0)], rows
    )
    assert lines == [
        {
            "sku": "BEAR",
            "devices_activated": 2,
            "package_fees_nano_usd": 200,
            "package_fees_usd": "0.000000200",
            "by_model": {"toy-chat": {"requests": 2, "input_tokens": 15, "output_tokens": 21}},
        },
        {
            "sku": "OWL",
            "devices_activated": 1,
            "package_fees_nano_usd": 0,
            "package_fees_usd": "0.000000000",
            "by_model": {},
        },
    ]
