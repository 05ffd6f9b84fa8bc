"""Typed answers: `%%mirai --schema NAME`, ``batch(..., schema=Model)`` and the offline
server's answers to ``response_format: json_schema`` (strict conversion, validation lines,
the one re-ask) — pure parts first, then a session and a real kernel over loopback."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from kernelutil import kernel_fixtures
from pydantic import BaseModel, Field

from mirai_magics.answer_schema import _strict, model_schema, resolve_schema, schema_of
from mirai_magics.api import batch, collect
from mirai_magics.config import parse_config
from mirai_magics.errors import UsageError
from mirai_magics.server.instances import instance, typed_answer
from mirai_magics.ui.cell import request_from_args

KEY = "sk-test-typed-0123456789abcdef"
CONFIG = parse_config("", "test.yaml")
NO_MEMORY = "context: {rag: {enabled: false}}\n"
CHAT = "/v1/chat/completions"
README = Path(__file__).resolve().parent.parent / "README.md"


def readme_block(name: str) -> str:
    """The ```python block after ``<!-- test-script: NAME -->`` in the README's Typed answers."""
    text = README.read_text(encoding="utf-8")
    found = re.search(rf"<!-- test-script: {name} -->\n```python\n(.*?)\n```\n", text, re.S)
    assert found, f"README has no test-script {name!r}"
    return found.group(1)


class Address(BaseModel):
    city: str
    zip: str | None = None


class Person(BaseModel):
    name: str
    age: int = Field(description="in years")
    home: Address
    friends: list[Address] = []


CITY = {  # a JSON-schema dict as a user writes it: one field required, others optional
    "title": "City",
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "population": {"type": "integer", "minimum": 1},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name"],
}


def objects(node):
    """Every object schema in ``node`` (nested ones too)."""
    if isinstance(node, dict):
        if node.get("type") == "object":
            yield node
        for value in node.values():
            yield from objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from objects(value)


# --- strict conversion ---------------------------------------------------------------------


def test_a_models_schema_is_strict_as_openai_requires():
    wire = schema_of(Person).response_format()
    assert wire["type"] == "json_schema"
    spec = wire["json_schema"]
    assert (spec["name"], spec["strict"]) == ("Person", True)
    found = list(objects(spec["schema"]))
    assert len(found) >= 2  # Person and Address
    for node in found:
        assert node["additionalProperties"] is False
        assert node["required"] == list(node["properties"])  # optional ones too
    assert "null" in json.dumps(spec["schema"]["$defs"]["Address"]["properties"]["zip"])
    assert '"default": null' not in json.dumps(spec["schema"])
    json.dumps(wire)  # plain JSON: it travels in queued payloads


def test_the_built_in_rules_give_what_the_sdk_gives():
    raw = Person.model_json_schema()
    ours = copy.deepcopy(raw)
    assert _strict(ours, ours) == model_schema(Person)  # the fallback for an SDK that moved it


def test_a_dict_schema_is_sent_strict_and_the_users_dict_stays_as_written():
    before = copy.deepcopy(CITY)
    typed = schema_of(CITY, "city_schema")
    sent = typed.response_format()["json_schema"]
    assert sent["name"] == "City"  # its title; else the notebook name
    assert sent["schema"]["required"] == ["name", "population", "tags"]
    assert sent["schema"]["additionalProperties"] is False
    assert before == CITY  # the caller's dict is left as written
    assert schema_of({"type": "object", "properties": {}}, "my schema!").name == "my_schema_"


# --- validation messages ---------------------------------------------------------------------


def test_a_mismatch_is_one_line_naming_the_field():
    typed = schema_of(Person)
    bad_age = '{"name": "Ann", "age": "old", "home": {"city": "Oslo", "zip": null}, "friends": []}'
    assert typed.check(bad_age).error == (
        "answer does not match Person: age: Input should be a valid integer, unable to parse "
        "string as an integer"
    )
    no_city = '{"name": "Ann", "age": 3, "home": {"zip": null}, "friends": [{"city": 1}]}'
    assert typed.check(no_city).error == (
        "answer does not match Person: home.city: Field required (+1 more)"
    )
    assert typed.check("Sorry, I cannot.").error.startswith(
        "answer does not match Person: Invalid JSON: expected value"
    )
    fenced = '```json\n{"name": "Ann", "age": 3, "home": {"city": "Oslo", "zip": null}}\n```'
    assert typed.check(fenced).data == Person(name="Ann", age=3, home=Address(city="Oslo"))


def test_a_dict_schema_is_checked_with_jsonschema():
    typed = schema_of(CITY, "city_schema")
    assert typed.check('{"name": "Oslo"}').data == {"name": "Oslo"}  # the user's own schema
    assert typed.check('{"name": "Oslo", "population": "many"}').error == (
        "answer does not match City: population: 'many' is not of type 'integer'"
    )
    assert typed.check('{"population": 3}').error == (
        "answer does not match City: 'name' is a required property"
    )
    assert typed.check("{nope").error == (
        "answer does not match City: invalid JSON: Expecting property name enclosed in double "
        "quotes (line 1)"
    )
    assert (
        "the JSON schema City: population:" in typed.check('{"name": 1, "population": 0}').reask()
    )


def test_what_cannot_be_a_schema_is_one_line(monkeypatch):
    def refused(value, name="thing") -> str:
        with pytest.raises(UsageError) as caught:
            schema_of(value, name)
        return str(caught.value)

    with pytest.raises(UsageError) as unknown:
        resolve_schema("Persn", {"Person": Person})
    assert str(unknown.value).startswith("--schema Persn: no such name in the notebook — define")
    ann = Person(name="Ann", age=3, home=Address(city="Oslo"))
    assert refused(ann, "ann") == (
        "ann is a Person instance, not a model class — pass the class: --schema Person"
    )
    assert refused(5, "n").startswith("n is of type int, not a pydantic model class or a JSON")
    assert refused({"type": "array"}).startswith('thing: a typed answer\'s schema needs "type"')
    bad = {"type": "object", "properties": {"a": {"type": "nope"}}}
    assert refused(bad).startswith("thing is not a valid JSON schema: 'nope' is not valid")
    monkeypatch.setitem(sys.modules, "jsonschema", None)  # not installed
    assert refused(CITY) == (
        "a JSON-schema dict needs the jsonschema package to check answers — pip install "
        "jsonschema, or pass a pydantic model"
    )
    assert schema_of(Person).name == "Person"  # a model needs no jsonschema


def cell_args(**given) -> SimpleNamespace:
    names = ("profile", "model", "temperature", "max_tokens", "format", "system", "out", "k")
    flags = dict.fromkeys(("no_history", "no_memory", "no_interp", "background"), False)
    unset = {**dict.fromkeys(names), "stream": None, "schema": None, "retry_invalid": False}
    return SimpleNamespace(**{**unset, **flags, **given})


def test_schema_options_that_do_not_fit_are_one_line():
    namespace = {"Person": Person}

    def refused(**given) -> str:
        with pytest.raises(UsageError) as caught:
            request_from_args(cell_args(**given), "hi", CONFIG, namespace=namespace)
        return str(caught.value)

    assert refused(schema="Person", format="markdown") == (
        "--schema answers are JSON, not --format markdown — drop --format (or use --format json)"
    )
    assert refused(retry_invalid=True).startswith("--retry-invalid re-asks an answer that does")
    assert refused(schema="Person", background=True).startswith("--schema checks the answer in")
    request = request_from_args(cell_args(schema="Person"), "hi", CONFIG, namespace=namespace)
    assert request.fmt == "json" and request.schema.model is Person
    assert request.overrides["response_format"]["json_schema"]["strict"] is True


# --- the offline server's instances ------------------------------------------------------------


def test_the_offline_server_answers_a_minimal_instance_of_the_schema():
    schema = schema_of(Person).wire
    assert json.loads(typed_answer(schema)) == {
        "name": "…",
        "age": 0,
        "home": {"city": "…", "zip": "…"},
        "friends": [{"city": "…", "zip": "…"}],  # arrays of one
    }
    Person.model_validate_json(typed_answer(schema))
    kinds = {
        "type": "object",
        "properties": {
            "kind": {"enum": ["b", "a"]},
            "when": {"type": "string", "format": "date-time"},
            "n": {"type": "number", "exclusiveMinimum": 2.5},
            "ok": {"type": "boolean"},
            "maybe": {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 3}]},
        },
    }
    assert instance(kinds) == {
        "kind": "b",
        "when": "2024-01-01T00:00:00Z",
        "n": 3,
        "ok": True,
        "maybe": 3,
    }
    assert json.loads(typed_answer(schema, broken=True))["name"] == 0  # first field, wrong type
    assert "not JSON" in typed_answer({"type": "object", "properties": {}}, broken=True)


# --- batch, on a session ---------------------------------------------------------------------


def chat_bodies(server) -> list[dict]:
    return [r["body"] for r in server.stats_snapshot()["recent"] if r["path"] == CHAT]


def test_batch_with_a_schema_gives_typed_rows_and_a_mismatch_is_a_value(
    make_session, offline_server
):
    session = make_session(NO_MEMORY, fake_time=False)
    offline_server.set_faults(schema_break="BROKEN")
    rows = batch(
        ["Ann", "Bob BROKEN", "Cy"], template="Invent {item}.", schema=Person, session=session
    )
    assert isinstance(rows[0].data, Person) and isinstance(rows[2].value, Person)
    assert rows[0].data.home == Address(city="…", zip="…")
    bad = rows[1]
    assert not bad.ok and bad.error_code == "invalid_schema" and bad.data is None
    assert bad.error == "answer does not match Person: name: Input should be a valid string"
    assert json.loads(bad.text)["name"] == 0  # the raw answer is kept
    bodies = chat_bodies(offline_server)
    assert len(bodies) == 3
    for body in bodies:
        assert body["response_format"] == schema_of(Person).response_format()
    job_id = batch(["Di"], schema=CITY, session=session, wait=False)
    assert collect(session, job_id)[0].data == {"name": "…", "population": 1, "tags": ["…"]}


def test_rows_collected_in_another_process_are_the_parsed_json(make_session, offline_server):
    session = make_session(NO_MEMORY, fake_time=False)
    here = batch(["Ann"], schema=Person, session=session)
    assert isinstance(here[0].data, Person)
    job_id = here.job_id
    script = (
        "import sys\nfrom mirai_magics.api import shaped\nfrom mirai_magics.session import "
        "Session\nwith Session() as s:\n    rows = shaped(s, s.jobs.results(sys.argv[1]), "
        "sys.argv[1])\n    print(type(rows[0].data).__name__, rows[0].data['name'])"
    )
    env = {**os.environ, "MIRAI_BASE_URL": offline_server.url, "OPENAI_API_KEY": KEY}
    done = subprocess.run(
        [sys.executable, "-c", script, job_id], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.stdout.strip() == "dict …", done.stderr  # after a restart: no model class


def test_batch_refuses_a_schema_it_cannot_use(make_session, offline_server):
    session = make_session(NO_MEMORY, fake_time=False)
    with pytest.raises(UsageError, match="schema= answers are JSON, not format='markdown'"):
        batch(["a"], schema=Person, format="markdown", session=session)
    with pytest.raises(UsageError, match="schema is of type str, not a pydantic model"):
        batch(["a"], schema="Person", session=session)
    assert chat_bodies(offline_server) == []


# --- in a real kernel ---------------------------------------------------------------------------


KERNEL_CONFIG = NO_MEMORY + "defaults: {max_retries: 1}\n"
server, loaded_kernel = kernel_fixtures("typed", KERNEL_CONFIG, KEY, kernel_name="loaded_kernel")


@pytest.fixture(scope="module")
def kernel(loaded_kernel):
    loaded_kernel.run(readme_block("typed-model"))  # the README's Person
    loaded_kernel.run(f"city_schema = {CITY!r}")
    return loaded_kernel


@pytest.fixture
def fresh(server, kernel):
    server.reset()
    kernel.run("%mirai reset")
    return kernel


def plain(execution) -> list[str]:
    return execution.data("text/plain")


def badge(execution) -> str:
    return [t for t in plain(execution) if t.startswith("[mirai] ") and " · " in t][-1]


def logged(kernel) -> int:
    """How many calls the notebook's call log holds."""
    return int(kernel.run("calls = %mirai log -n 100000\nprint(len(calls))").text)


def shown(kernel, expression: str) -> str:
    return kernel.run(f"print({expression})").text.strip()


@pytest.mark.kernel
def test_schema_person_gives_a_person_and_the_request_is_strict(fresh, server):
    cell = "%%mirai --schema Person --out p\nInvent a person."
    assert f"```\n{cell}\n```" in README.read_text(encoding="utf-8")  # the README's cell
    r = fresh.run(cell)
    assert shown(fresh, "type(p).__name__, p.age, _mirai.data is p") == "Person 0 True"
    assert r.data("application/json") == [{"name": "…", "age": 0}]
    assert "typed: Person" in badge(r) and not any("✗" in t for t in plain(r))
    (body,) = chat_bodies(server)
    spec = body["response_format"]["json_schema"]
    assert body["response_format"]["type"] == "json_schema"
    assert (spec["name"], spec["strict"]) == ("Person", True)
    assert spec["schema"]["additionalProperties"] is False
    assert spec["schema"]["required"] == ["name", "age"]
    rich = fresh.run("_mirai").of_type("execute_result")[0]["content"]["data"]
    assert rich["application/json"] == {"name": "…", "age": 0}


@pytest.mark.kernel
def test_a_mismatch_names_the_field_and_keeps_the_raw_text(fresh, server):
    server.set_faults(schema_break="BROKEN")
    r = fresh.run("%%mirai --schema Person --out q\nA BROKEN person.")
    assert "[mirai] ✗ answer does not match Person: name: Input should be a valid string" in plain(
        r
    )
    assert "schema mismatch" in badge(r)
    assert shown(fresh, "_mirai.text") == '{"name":0,"age":0}'
    assert shown(fresh, "_mirai.data, 'q' in dir()") == "None False"
    assert len(chat_bodies(server)) == 1  # no re-ask without --retry-invalid


@pytest.mark.kernel
def test_retry_invalid_re_asks_once_with_the_error_and_succeeds(fresh, server):
    server.set_faults(schema_break="BROKEN")
    before = logged(fresh)
    r = fresh.run("%%mirai --schema Person --out p2 --retry-invalid\nA BROKEN person.")
    first, again = chat_bodies(server)
    assert again["messages"][:-2] == first["messages"]
    assert again["messages"][-2] == {"role": "assistant", "content": '{"name":0,"age":0}'}
    reask = again["messages"][-1]
    assert reask["role"] == "user" and "name: Input should be a valid string" in reask["content"]
    assert again["response_format"] == first["response_format"]
    assert "re-asked 1×" in badge(r) and "typed: Person" in badge(r)
    assert not any("✗" in t for t in plain(r))
    assert shown(fresh, "type(p2).__name__, p2.name") == "Person …"
    history = fresh.run("h = %mirai history\nprint([m['content'] for m in h])")
    assert "A BROKEN person." in history.text and '{"name":"…","age":0}' in history.text
    assert logged(fresh) == before + 2  # both calls are in the call log


@pytest.mark.kernel
def test_a_re_ask_that_still_does_not_match_is_not_asked_again(fresh, server):
    server.set_faults(schema_break="did not match")  # the prompt and the re-ask both break
    r = fresh.run("%%mirai --schema Person --out p3 --retry-invalid\nIt did not match.")
    assert len(chat_bodies(server)) == 2  # one re-ask, never a second
    assert "[mirai] ✗ answer does not match Person: name: Input should be a valid string" in plain(
        r
    )
    assert "re-asked 1×" in badge(r) and "schema mismatch" in badge(r)
    assert shown(fresh, "_mirai.text, 'p3' in dir()") == '{"name":0,"age":0} False'


@pytest.mark.kernel
def test_a_json_schema_dict_gives_a_dict(fresh, server):
    fresh.run("%%mirai --schema city_schema --out c\nA city, please.")
    assert shown(fresh, "c") == "{'name': '…', 'population': 1, 'tags': ['…']}"
    spec = chat_bodies(server)[0]["response_format"]["json_schema"]
    assert spec["name"] == "City" and spec["schema"]["required"] == ["name", "population", "tags"]
    assert shown(fresh, "city_schema['required']") == "['name']"  # the user's dict is untouched


@pytest.mark.kernel
def test_a_bad_schema_name_is_one_line_and_sends_nothing(fresh, server):
    fresh.run("n = 5")
    lines = [
        plain(fresh.run(f"%%mirai {args}\nhi"))
        for args in ("--schema Nope", "--schema n", "--schema Person --format markdown")
    ]
    assert [len(x) for x in lines] == [1, 1, 1]
    assert lines[0][0].startswith("[mirai] ✗ --schema Nope: no such name in the notebook")
    assert lines[1][0].startswith("[mirai] ✗ n is of type int, not a pydantic model class")
    assert lines[2][0].startswith("[mirai] ✗ --schema answers are JSON, not --format markdown")
    assert chat_bodies(server) == []


@pytest.mark.kernel
def test_batch_with_a_model_of_the_notebook_gives_typed_rows(fresh, server):
    server.set_faults(schema_break="BROKEN")
    fresh.run(
        "from mirai_magics import batch\n"
        "rows = batch(['Ann', 'Bob BROKEN'], template='Invent {item}.', schema=Person)"
    )
    assert shown(fresh, "type(rows[0].data).__name__, rows[1].error_code") == (
        "Person invalid_schema"
    )
    assert "name: Input should be a valid string" in shown(fresh, "rows[1].error")
    assert all(b["response_format"]["json_schema"]["strict"] for b in chat_bodies(server))


@pytest.mark.kernel
def test_the_batch_line_command_takes_a_schema_too(fresh, server):
    fresh.run("names = ['Ann', 'Bob']")
    fresh.run("people = %mirai batch names -t 'Invent {item}.' --schema Person")
    assert shown(fresh, "type(people[1].data).__name__, people.failed") == "Person []"
    assert all(b["response_format"]["json_schema"]["strict"] for b in chat_bodies(server))
    wrong = fresh.run("%mirai batch names -t 'Invent {item}.' --schema Persn", allow_error=True)
    assert "--schema Persn: no such name in the notebook" in wrong.text
    assert len(chat_bodies(server)) == 2  # the bad name sent nothing
    fresh.run("import mirai_magics.api as api\napi._schemas.clear()  # as after a restart")
    resume = "f'batch resume {people.job_id} --schema Person'"  # %mirai does not expand {…}
    fresh.run(f"again = get_ipython().run_line_magic('mirai', {resume})")
    assert shown(fresh, "type(again[0].data).__name__") == "Person"
    assert len(chat_bodies(server)) == 2  # nothing was pending: nothing sent again


@pytest.mark.kernel
def test_the_readme_batch_gives_people(fresh, server):
    fresh.run(readme_block("typed-batch"))
    assert shown(fresh, "people[0].data.age, people.failed") == "0 []"
    assert shown(fresh, "type(people[1].data).__name__") == "Person"
    assert len(chat_bodies(server)) == 2


def test_a_model_without_a_json_schema_is_one_line():
    from collections.abc import Callable

    from pydantic import BaseModel

    from mirai_magics.answer_schema import model_schema

    class Handler(BaseModel):
        on_done: Callable[[int], None]

    with pytest.raises(UsageError) as info:
        model_schema(Handler)
    assert "Handler has no JSON schema" in str(info.value) and "\n" not in str(info.value)


def test_a_json_null_answer_is_none_for_out_not_the_string_null(capsys):
    from mirai_magics.client.records import CallRecord, Reply
    from mirai_magics.ui.render import render_answer

    record = CallRecord(profile="main", model="gpt-4o-mini", tokens_in=3, tokens_out=1)
    rendered = render_answer(Reply("null", record), "json", shell=None)
    assert rendered.error is None and rendered.reply.value is None  # what --out stores
    assert render_answer(Reply("[]", record), "json", shell=None).reply.value == []
    text = render_answer(Reply("a line", record), "markdown", shell=None).reply
    assert text.value == "a line"
