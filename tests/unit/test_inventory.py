"""The batch inventory parser: examples, line numbers, and properties over generated CSV."""

from __future__ import annotations

import csv
import io
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsmca.errors import InvalidRequest
from hsmca.inventory import parse_inventory
from hsmca.models import KeyType


def test_rows_with_every_column():
    inventory = parse_inventory(
        "dns,ip,out,days,key_type\n"
        '"rec1.example.com, rec1",10.0.0.1;10.0.0.2,site/rec1.pfx,90,p256\n'
        "rec2.example.com;rec2,,,,\n"
    )
    assert inventory.errors == []
    first, second = inventory.rows
    assert first.line == 2 and second.line == 3
    assert first.request.dns_names == ("rec1.example.com", "rec1")
    assert [str(a) for a in first.request.ip_addresses] == ["10.0.0.1", "10.0.0.2"]
    assert str(first.out) == "site/rec1.pfx"
    assert (first.request.days, first.request.key_type) == (90, KeyType.P256)
    assert second.request.dns_names == ("rec2.example.com", "rec2")
    assert (second.request.days, second.request.key_type, second.out) == (
        365,
        KeyType.RSA2048,
        None,
    )


def test_semicolon_separated_spreadsheet_export_with_bom():
    inventory = parse_inventory("\ufeffdns;ip\r\nrec1.example.com;10.0.0.1\r\n")
    assert inventory.errors == []
    assert inventory.rows[0].request.dns_names == ("rec1.example.com",)
    assert str(inventory.rows[0].request.ip_addresses[0]) == "10.0.0.1"


def test_bad_rows_are_reported_with_line_and_value_and_do_not_stop_the_others():
    inventory = parse_inventory(
        "dns,ip,days\n"
        "rec1.example.com,10.0.0.1,\n"
        "bad_name.example.com,,\n"
        '"rec3.example.com,\n rec3",10.0.0.999,\n'
        "rec4.example.com,,often\n"
        "\n"
        "# a comment line\n"
        "rec5.example.com,,30\n"
        "rec1.example.com,,\n"
    )
    assert [row.line for row in inventory.rows] == [2, 9]
    assert [error.line for error in inventory.errors] == [3, 4, 6, 10]
    fragments = ["bad_name.example.com", "10.0.0.999", "'often'", "like line 2"]
    for error, fragment in zip(inventory.errors, fragments, strict=True):
        assert fragment in error.message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("ip\n10.0.0.1\n", "needs a 'dns' column"),
        ("dns,owner\nrec1,me\n", "unknown column 'owner'"),
        ("dns,dns\nrec1,rec2\n", "named twice"),
    ],
)
def test_bad_headers_stop_everything(text, message):
    with pytest.raises(InvalidRequest, match=message):
        parse_inventory(text)


def test_key_type_and_too_many_values():
    inventory = parse_inventory("dns,key_type\nrec1.example.com,rsa4096\nrec2.example.com,p256,x\n")
    assert inventory.rows == []
    assert "must be one of rsa2048, rsa3072, p256, p384" in inventory.errors[0].message
    assert "3 values but 2 columns" in inventory.errors[1].message


labels = st.from_regex(r"[a-z][a-z0-9]{0,9}", fullmatch=True)
hostnames = st.lists(labels, min_size=2, max_size=4).map(".".join)
addresses = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(hostnames, min_size=1, max_size=3, unique=True),
            st.lists(addresses, max_size=3, unique=True),
            st.integers(min_value=1, max_value=3650),
            st.sampled_from(["rsa2048", "rsa3072", "p256", "p384"]),
        ),
        max_size=8,
        unique_by=lambda row: row[0][0],
    ),
    st.sampled_from([";", ","]),
)
def test_generated_inventories_round_trip(rows, name_separator):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["dns", "ip", "days", "key_type"])
    for names, ips, days, key_type in rows:
        writer.writerow([name_separator.join(names), ";".join(ips), days, key_type])
    inventory = parse_inventory(buffer.getvalue())
    assert inventory.errors == []
    assert [row.line for row in inventory.rows] == list(range(2, 2 + len(rows)))
    for row, (names, ips, days, key_type) in zip(inventory.rows, rows, strict=True):
        assert row.request.dns_names == tuple(names)
        assert row.request.ip_addresses == tuple(ipaddress.ip_address(a) for a in ips)
        assert (row.request.days, row.request.key_type.value) == (days, key_type)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_never_raises_anything_but_invalid_request(text):
    try:
        inventory = parse_inventory("dns,ip,out,days,key_type\n" + text)
    except InvalidRequest:
        return
    for error in inventory.errors:
        assert error.line >= 2 and error.message
    for row in inventory.rows:
        assert row.request.dns_names
