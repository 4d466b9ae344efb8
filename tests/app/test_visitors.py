"""Who is visiting: server-signed browser tokens (never chosen by a client), ``--auth`` users, and presence."""

from __future__ import annotations

from pathlib import Path

from app.visitors import Presence, Tokens


def test_a_token_names_the_same_visitor_after_a_restart(tmp_path: Path) -> None:
    token = Tokens(tmp_path).issue()
    first = Tokens(tmp_path).visitor(None, token)
    again = Tokens(tmp_path).visitor(None, token)  # a new server process, the same data folder
    assert first == again and first.owner.startswith("session-") and first.token == token


def test_a_forged_or_chosen_token_gets_a_fresh_visitor(tmp_path: Path) -> None:
    tokens = Tokens(tmp_path)
    real = tokens.visitor(None, tokens.issue())
    ident = real.token.split(".")[0]
    for forged in (f"{ident}.{'0' * 24}", "alice", "", None, 42, real.token + "x"):
        other = tokens.visitor(None, forged)
        assert other.owner != real.owner and tokens.check(other.token)


def test_another_servers_tokens_are_not_accepted(tmp_path: Path) -> None:
    token = Tokens(tmp_path / "a").issue()
    assert Tokens(tmp_path / "b").check(token) is None


def test_an_auth_user_is_their_name(tmp_path: Path) -> None:
    tokens = Tokens(tmp_path)
    assert tokens.visitor("alice", tokens.issue()).owner == "alice"


def test_the_signing_secret_is_private(tmp_path: Path) -> None:
    Tokens(tmp_path)
    secret = next(tmp_path.iterdir())
    assert secret.stat().st_mode & 0o077 == 0


def test_presence_counts_open_pages_then_time_since_the_last_closed() -> None:
    p = Presence()
    p.seen("alice", page="tab-1")
    assert p.gone_for("alice") == 0.0
    p.closed("tab-1")
    assert 0.0 <= p.gone_for("alice") < 5.0
    assert p.gone_for("alice", now=1e12) > 1e9
    assert p.gone_for("nobody") == float("inf")
