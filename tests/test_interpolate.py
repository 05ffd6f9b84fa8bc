"""Interpolation edge cases (pure): braces that are not references stay literal."""

from __future__ import annotations

from mirai_magics.ui.interpolate import interpolate


class Frame:
    shape = (3, 4)
    _private = "hidden"


NS = {
    "name": "Ada",
    "df": Frame(),
    "items": ["zero", "one"],
    "conf": {"key": "value", "nested": {"deep": 42}},
    "In": ["", "x = 1", "print(x)"],
    "Out": {2: "printed"},
    "Err": {3: "Traceback: ZeroDivisionError"},
    "x": 5,
}


def run(text: str):
    return interpolate(text, NS)


def test_simple_attribute_index_and_nested_access():
    r = run("{name} {df.shape} {items[1]} {items[-1]} {conf['key']} {conf[\"nested\"]['deep']}")
    assert r.text == "Ada (3, 4) one one value 42"
    assert r.undefined == []


def test_history_references_use_execution_numbers():
    assert (
        run("{In[2]} / {Out[2]} / {Err[3]}").text
        == "print(x) / printed / Traceback: ZeroDivisionError"
    )


def test_code_json_and_dict_literals_stay_literal():
    code = 'def f():\n    return {"a": 1, "b": {}}\nd = {x: 1}\nf"{x!r:>10}"\ns = set{}\n'
    assert run(code).text == code
    payload = '{"name": "{name}", "list": [1, {"k": 2}]}'
    assert run(payload).text == '{"name": "Ada", "list": [1, {"k": 2}]}'


def test_undefined_names_stay_literal_and_are_reported():
    r = run("Hello {name}, {missing} and {items[7]} and {df.nope}")
    assert r.text == "Hello Ada, {missing} and {items[7]} and {df.nope}"
    assert r.undefined == ["missing", "items[7]", "df.nope"]


def test_private_attributes_are_not_reached():
    r = run("{df._private} {df.__class__}")
    assert r.text == "{df._private} {df.__class__}"


def test_values_are_never_interpolated_twice():
    ns = {"a": "{b}", "b": "secret"}
    assert interpolate("{a}", ns).text == "{b}"


def test_double_braces_escape():
    assert run("{{name}} is literal, {name} is not").text == "{name} is literal, Ada is not"


def test_long_values_are_cut():
    r = interpolate("{big}", {"big": "x" * 50_000})
    assert len(r.text) < 21_000 and "more characters cut" in r.text
