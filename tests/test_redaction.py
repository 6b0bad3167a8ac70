"""Redaction that cannot leak: every path is checked when the job is declared (names and
aliases, nested models, dataclasses, TypedDicts, unions, lists, mappings), and a run's
secrets show nowhere: not in any endpoint that shows arguments, not in either SSE stream, not
on the command line, not in the stored events."""

from __future__ import annotations

import dataclasses
from typing import Any

import anyio
import asyncpg
import httpx
import pytest
from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypedDict

from asyncjobs import App, ConfigurationError, Context
from asyncjobs.__main__ import main
from asyncjobs.redact import REDACTED, redact_args
from tests.web_support import SSE_HEADERS, dashboard, read_until_end, wait_for


class Card(BaseModel):
    holder: str
    number: str = Field(alias="cardNumber")
    cvc: str


class Bank(BaseModel):
    owner: str
    iban: str


class Payment(BaseModel):
    method: Card | Bank
    backup: Card | None = None


class Shouty(BaseModel):
    """Keys made by an alias generator: the stored key is the generated one."""

    model_config = ConfigDict(alias_generator=str.upper)
    pin: str
    label: str


@dataclasses.dataclass
class Login:
    user: str
    password: str


class Headers(TypedDict):
    authorization: str
    accept: str


class Tree(BaseModel):
    token: str
    children: list[Tree] = []


async def pay(
    card: Card,
    wallet: list[Card],
    payment: Payment,
    login: Login,
    headers: Headers,
    vault: dict[str, str],
    shouty: Shouty,
    tree: Tree,
    token: str,
    note: str,
) -> None: ...


# ---------------------------------------------------------------------- at declaration

RESOLVED = {
    "card.number": [("card", "cardNumber")],
    "card.cardNumber": [("card", "cardNumber")],  # the alias names the same key
    "card": [("card",)],
    "wallet.number": [("wallet", "cardNumber")],  # lists are transparent
    "payment.method.iban": [("payment", "method", "iban")],  # a member of a union
    "payment.method.number": [("payment", "method", "cardNumber")],
    "payment.backup.cvc": [("payment", "backup", "cvc")],  # Optional[Card]
    "login.password": [("login", "password")],  # a dataclass
    "headers.authorization": [("headers", "authorization")],  # a TypedDict
    "vault.*": [("vault", "*")],  # every value of a mapping
    "shouty.pin": [("shouty", "PIN")],  # a generated alias
    "tree.children.children.token": [("tree", "children", "children", "token")],  # recursive
}


@pytest.mark.parametrize("path", list(RESOLVED))
def test_a_path_resolves_to_the_stored_keys(path: str) -> None:
    job = App("ok").job(redact=[path])(pay)
    assert list(job.redact_keys) == RESOLVED[path]
    assert job.redact == (path,)


REFUSED = {
    "cardd": "'cardd' is not a field there (fields: card, wallet, payment",
    "card.numbr": "'numbr' is not a field there (fields: holder, number (alias cardNumber), cvc)",
    "wallet.numbr": "'numbr' is not a field there",
    "payment.method.ibn": "'ibn' is not a field there (fields: holder, number (alias cardNumber)"
    ", cvc, owner, iban)",
    "payment.backup.iban": "'iban' is not a field there",  # only Card may be a backup
    "login.pasword": "'pasword' is not a field there (fields: user, password)",
    "headers.auth": "'auth' is not a field there (fields: authorization, accept)",
    "vault.master": "'master' would be a key of a mapping, which no type can check",
    "vault.*.x": "'x' is not a field there",
    "card.*": "'*' only stands for the keys of a mapping",
    "token.x": "'x' is not a field there (fields: none: it is not a model)",
    "tree.children.tokn": "'tokn' is not a field there",
    "p0": "'p0' is not a field there",  # the argument model's internal names are not names
    "card..number": "must be dot-separated field names",
    "": "must be dot-separated field names",
}


@pytest.mark.parametrize("path", list(REFUSED))
def test_a_path_that_is_not_there_is_refused(path: str) -> None:
    app = App("typo")
    with pytest.raises(ConfigurationError) as info:
        app.job(redact=[path])(pay)
    assert "job 'pay': " in str(info.value) and REFUSED[path] in str(info.value)
    assert app.jobs == {}


def test_redact_takes_a_list_of_paths() -> None:
    with pytest.raises(ConfigurationError, match="not a string"):
        App("s").job(redact="token")(pay)  # a str is a Sequence[str]: only run time refuses it
    with pytest.raises(ConfigurationError, match="dot-separated"):
        App("s").job(redact=[5])(pay)  # type: ignore[list-item]


def test_redaction_replaces_values_and_keeps_keys() -> None:
    keys = App("r").job(redact=["wallet.number", "vault.*", "tree.children.token"])(pay)
    stored = {
        "wallet": [{"cardNumber": "1", "holder": "a"}, {"cardNumber": "2", "holder": "b"}],
        "vault": {"a": "x", "b": {"deep": "y"}},
        "tree": {"token": "top", "children": [{"token": "t", "children": []}]},
    }
    shown = redact_args(stored, keys.redact_keys)
    assert shown == {
        "wallet": [
            {"cardNumber": REDACTED, "holder": "a"},
            {"cardNumber": REDACTED, "holder": "b"},
        ],
        "vault": {"a": REDACTED, "b": REDACTED},
        "tree": {"token": "top", "children": [{"token": REDACTED, "children": []}]},
    }
    assert stored["vault"] == {"a": "x", "b": {"deep": "y"}}  # a copy: the record is untouched


# ---------------------------------------------------------------------- nowhere to be seen

SECRETS = {
    "card.number": "S1-card-number",
    "card.cvc": "S2-card-cvc",
    "wallet[0].number": "S3-wallet-0",
    "wallet[1].number": "S4-wallet-1",
    "payment.method.iban": "S5-iban",
    "payment.backup.number": "S6-backup",
    "login.password": "S7-password",
    "headers.authorization": "S8-bearer",
    "vault.*": "S9-vault",
    "shouty.pin": "S10-pin",
    "tree...token": "S11-token",
    "token": "S12-token",
}
VISIBLE = ["Ada Lovelace", "ada-user", "text/html", "PIN-LABEL", "visible note"]


def secret_app() -> App:
    app = App("secrets")
    app.job(
        name="pay",
        redact=[
            "card.number",  # by name ...
            "card.cvc",
            "wallet.cardNumber",  # ... and by alias, through a list
            "payment.method.iban",
            "payment.backup.number",
            "login.password",
            "headers.authorization",
            "vault.*",
            "shouty.pin",
            "tree.children.children.token",
            "token",
        ],
    )(_pay_and_log)
    return app


async def _pay_and_log(
    ctx: Context,
    card: Card,
    wallet: list[Card],
    payment: Payment,
    login: Login,
    headers: Headers,
    vault: dict[str, str],
    shouty: Shouty,
    tree: Tree,
    token: str,
    note: str,
) -> str:
    await ctx.progress(0.5, f"charging {card.holder}")
    await ctx.log(f"paid for {login.user}", note=note)
    return "paid"


def secret_args() -> dict[str, Any]:
    s = SECRETS
    card = {"holder": "Ada Lovelace", "cardNumber": s["card.number"], "cvc": s["card.cvc"]}
    leaf = {"token": s["tree...token"], "children": []}
    return {
        "card": Card.model_validate(card),
        "wallet": [
            Card(holder="w0", cardNumber=s["wallet[0].number"], cvc="000"),
            Card(holder="w1", cardNumber=s["wallet[1].number"], cvc="111"),
        ],
        "payment": Payment(
            method=Bank(owner="Ada Lovelace", iban=s["payment.method.iban"]),
            backup=Card(holder="b", cardNumber=s["payment.backup.number"], cvc="222"),
        ),
        "login": Login(user="ada-user", password=s["login.password"]),
        "headers": {"authorization": s["headers.authorization"], "accept": "text/html"},
        "vault": {"primary": s["vault.*"]},
        "shouty": Shouty(PIN=s["shouty.pin"], LABEL="PIN-LABEL"),
        "tree": Tree(token="root-token", children=[Tree(token="mid", children=[leaf])]),
        "token": s["token"],
        "note": "visible note",
    }


def _assert_hidden(where: str, text: str, *, shows_args: bool = True) -> None:
    leaked = [name for name, secret in SECRETS.items() if secret in text]
    assert not leaked, f"{where} shows {leaked}: {text[:400]}"
    if shows_args:
        assert REDACTED in text and "visible note" in text, f"{where}: {text[:400]}"


@pytest.mark.anyio
async def test_secrets_show_nowhere(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    app = secret_app()
    async with (
        app.client(dsn) as client,
        app.worker(dsn, concurrency=2),
        dashboard(app, dsn) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        async with http.stream("GET", "/api/events", headers=SSE_HEADERS) as feed:
            run = await client.trigger_async("pay", **secret_args())
            await client.wait(run.id, timeout=30)
            feed_text = ""
            async for chunk in feed.aiter_text():  # the global stream, until it says done
                feed_text += chunk
                if '"succeeded"' in feed_text:
                    break
        stored = await client.get_run(run.id)
        assert all(secret in str(stored.args) for secret in SECRETS.values())  # really there
        run_stream = await read_until_end(http, f"/api/runs/{run.id}/events")
        bodies = {
            "the global stream /api/events": feed_text,
            "the run stream /api/runs/{id}/events": "".join(
                str(m.data) for m in run_stream
            ),
            "/api/runs": (await http.get("/api/runs")).text,
            "/api/runs?job=pay": (await http.get("/api/runs?job=pay&status=succeeded")).text,
            "/api/runs/{id}": (await http.get(f"/api/runs/{run.id}")).text,
            "/api/runs/{id}/tree": (await http.get(f"/api/runs/{run.id}/tree")).text,
        }
        for where, text in bodies.items():
            _assert_hidden(where, text)
        events_json = (await http.get(f"/api/runs/{run.id}/events")).text
        _assert_hidden("/api/runs/{id}/events as JSON", events_json, shows_args=False)
        assert "charging Ada Lovelace" in events_json

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT data::text FROM asyncjobs.run_events")
    finally:
        await conn.close()
    assert len(rows) >= 4
    _assert_hidden("the stored run_events", "\n".join(r[0] for r in rows), shows_args=False)

    for argv in (["runs"], ["runs", "--job", "pay"], ["runs", "--tree", str(run.id)],
                 ["explain", str(run.id)], ["show", str(run.id)]):
        code = await anyio.to_thread.run_sync(main, [*argv, "--dsn", dsn])
        out = capsys.readouterr()
        assert code == 0, out.err
        shows_args = argv[0] == "show"  # by the rules the worker stored: no app code needed
        _assert_hidden(f"asyncjobs {' '.join(argv)}", out.out + out.err, shows_args=shows_args)
        assert str(run.id) in out.out


@pytest.mark.anyio
async def test_show_hides_all_arguments_of_a_job_no_worker_stored(
    dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without stored rules (no worker of the job ever started) nothing can say what is
    secret: the command line shows no argument at all."""
    app = secret_app()
    async with app.client(dsn) as client:
        run = await client.trigger_async("pay", **secret_args())
    code = await anyio.to_thread.run_sync(main, ["show", str(run.id), "--dsn", dsn])
    out = capsys.readouterr().out
    assert code == 0
    _assert_hidden("asyncjobs show", out, shows_args=False)
    assert "no worker stored this job's redaction rules" in out and "visible note" not in out


@pytest.mark.anyio
async def test_a_secret_triggered_over_http_is_hidden_there_too(dsn: str) -> None:
    """JSON arguments by alias (as the trigger form sends them) are stored by alias too."""
    app = secret_app()
    body = {
        "args": {
            **{k: v for k, v in secret_args().items() if k in ("token", "note", "vault")},
            "card": {"holder": "Ada Lovelace", "cardNumber": SECRETS["card.number"],
                     "cvc": SECRETS["card.cvc"]},
            "wallet": [],
            "payment": {"method": {"owner": "o", "iban": SECRETS["payment.method.iban"]}},
            "login": {"user": "ada-user", "password": SECRETS["login.password"]},
            "headers": {"authorization": SECRETS["headers.authorization"], "accept": "x"},
            "shouty": {"PIN": SECRETS["shouty.pin"], "LABEL": "l"},
            "tree": {"token": "t"},
        }
    }
    async with (
        app.client(dsn) as client,
        dashboard(app, dsn) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        assert (await http.get("/")).status_code == 200
        http.headers["x-csrf-token"] = http.cookies["asyncjobs_csrf"]
        created = await http.post("/api/jobs/pay/trigger", json=body)
        assert created.status_code == 201, created.text
        run_id = created.json()["id"]
        assert SECRETS["card.number"] in str((await client.get_run(run_id)).args)
        await wait_for(lambda: _listed(http, run_id))
        for path in ("/api/runs", f"/api/runs/{run_id}", f"/api/runs/{run_id}/tree"):
            _assert_hidden(path, (await http.get(path)).text)


async def _listed(http: httpx.AsyncClient, run_id: int) -> bool:
    runs = (await http.get("/api/runs")).json()["runs"]
    return any(r["id"] == run_id for r in runs)
