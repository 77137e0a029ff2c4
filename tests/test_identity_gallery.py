"""Identity round 2 (issue 26): enrolment from several faces, a gallery that grows from verified
corrections (with its safeguards), face quality, no takeover of another user's routing, names
that differ only by case or width are one user, group photos, and similarity messages that
read true. Every face is a real one from ../shared/data (the Taiwanese photos, the identity
photos, the CREMA-D clips)."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from emoadapt.errors import UnknownUserError
from emoadapt.store import DB_NAME, SCHEMA_VERSION, Store, user_name_key


# ---------------------------------------------------------------------------------------
# names that differ only by case or width are one user
# ---------------------------------------------------------------------------------------
def test_names_that_differ_by_case_or_width_are_one_user(tmp_path: Path) -> None:
    with Store(tmp_path / "home") as s:
        assert s.add_user("alice") is True
        assert s.add_user("Alice") is False and s.add_user("ALICE") is False and s.add_user("\uff21lice") is False
        assert s.users() == ["alice"]
        assert s.user("ALICE").name == "alice" and s.has_user("Alice")
        s.add_embeddings("Alice", np.ones((1, 4), np.float32), model="m")
        s.add_embeddings("\uff41lice", np.ones((1, 4), np.float32), model="m")  # full-width a
        assert list(s.embeddings(model="m")) == ["alice"] and len(s.embeddings("alice")["alice"]) == 2
        assert s.forget("ALICE").embeddings == 2
        assert s.users() == [] and not s.has_user("alice")
        with pytest.raises(UnknownUserError):
            s.user("Alice")
        s.add_user("Bob")  # the first spelling is the one listed
        assert s.users() == ["Bob"] and s.user("bob").name == "Bob"


def test_the_name_key_folds_case_and_width() -> None:
    assert user_name_key("Alice") == user_name_key("ALICE") == user_name_key("\uff21\uff4c\uff49\uff43\uff45") == "alice"
    assert user_name_key("STRASSE") == user_name_key("stra\u00dfe")
    assert user_name_key("Ann  Lee") == "ann lee"


def test_two_users_stored_under_case_variants_before_the_upgrade_stay_apart(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    home = tmp_path / "home"
    with Store(home) as s:
        s.add_user("Alice")
        s.add_embeddings("Alice", np.ones((1, 4), np.float32), model="m")
    con = sqlite3.connect(home / DB_NAME)  # back to schema 7, where "alice" was another user
    with con:
        con.execute("DROP INDEX users_name_key")
        con.execute("ALTER TABLE users DROP COLUMN name_key")
        con.execute("INSERT INTO users (name, created, meta, uid) VALUES ('alice', 2.0, '{}', 'f00d')")
        con.execute("PRAGMA user_version = 7")
    con.close()
    with caplog.at_level(logging.WARNING, logger="emoadapt.store"), Store(home) as s:
        assert s.schema_version == SCHEMA_VERSION and s.users() == ["Alice", "alice"]
        assert s.user("Alice").name == "Alice" and s.user("alice").name == "alice"  # each by its exact name
        assert s.user("ALICE").name == "Alice"  # another spelling: the older user
        assert s.add_user("aLiCe") is False and s.users() == ["Alice", "alice"]
        assert list(s.embeddings("alice")) == [] and len(s.embeddings("Alice")["Alice"]) == 1
        s.forget("alice")
        assert s.users() == ["Alice"]
    (msg,) = [r.getMessage() for r in caplog.records if "only by case" in r.getMessage()]
    assert "1 user(s)" in msg and "Alice" not in msg  # the store logs no names
