"""The tables of ``memory.sqlite``, the entry upsert, and the migration of older stores.

An entry is unique by (notebook, source): the same cell id or the same cell text in two
notebooks are two entries (each with its own 63-bit key), while their vectors are one row of
the shared ``vectors`` cache (keyed by SHA-256 of the text and the embedder). ``queries``
caches the vectors of search and prompt texts the same way (never the texts themselves).
"""

from __future__ import annotations

import sqlite3

ENTRIES = """
CREATE TABLE IF NOT EXISTS entries(
  key INTEGER PRIMARY KEY, source TEXT NOT NULL, kind TEXT NOT NULL,
  label TEXT NOT NULL, count INTEGER, run TEXT NOT NULL, body TEXT NOT NULL,
  output TEXT NOT NULL, error INTEGER NOT NULL, sha TEXT NOT NULL, file TEXT,
  version INTEGER NOT NULL, updated REAL NOT NULL, notebook TEXT NOT NULL DEFAULT '',
  UNIQUE (notebook, source))
"""
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('generation', 0), ('epoch', 0);
{ENTRIES};
CREATE INDEX IF NOT EXISTS entries_version ON entries(version);
CREATE INDEX IF NOT EXISTS entries_sha ON entries(sha);
CREATE INDEX IF NOT EXISTS entries_file ON entries(file);
CREATE TABLE IF NOT EXISTS vectors(
  sha TEXT NOT NULL, embedder TEXT NOT NULL, vector BLOB NOT NULL,
  PRIMARY KEY (sha, embedder)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queries(
  sha TEXT NOT NULL, embedder TEXT NOT NULL, vector BLOB NOT NULL, used REAL NOT NULL,
  PRIMARY KEY (sha, embedder)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS queries_used ON queries(used);
CREATE TABLE IF NOT EXISTS failed(
  sha TEXT NOT NULL, embedder TEXT NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL,
  PRIMARY KEY (sha, embedder)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tombstones(key INTEGER NOT NULL, version INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS tombstones_version ON tombstones(version);
CREATE TABLE IF NOT EXISTS files(
  path TEXT PRIMARY KEY, sha TEXT NOT NULL, chunks INTEGER NOT NULL, learned REAL NOT NULL);
"""
UPSERT = """
INSERT INTO entries(key, notebook, source, kind, label, count, run, body, output, error, sha,
                    file, version, updated)
VALUES (:key, :notebook, :source, :kind, :label, :count, :run, :body, :output, :error, :sha,
        :file, :version, :updated)
ON CONFLICT(notebook, source) DO UPDATE SET
  label = excluded.label, count = excluded.count, run = excluded.run, body = excluded.body,
  output = excluded.output, error = excluded.error, updated = excluded.updated,
  version = CASE WHEN entries.sha = excluded.sha THEN entries.version ELSE excluded.version END,
  sha = excluded.sha
"""
ROW_FIELDS = "key, source, kind, label, count, run, body, output, error, file, notebook, sha"


def create(db: sqlite3.Connection, _gen: int) -> None:
    """Bring an older file up to date, then create whatever is missing (idempotent)."""
    migrate(db)
    for statement in SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)


def migrate(db: sqlite3.Connection) -> bool:
    """A store from before notebook scopes: its entries get ``notebook = ''`` (no notebook
    known) and (notebook, source) becomes the unique pair. Keys, versions and vectors are
    kept, so no index has to change; True when the file was migrated."""
    columns = [row[1] for row in db.execute("PRAGMA table_info(entries)")]
    if not columns or "notebook" in columns:
        return False
    db.execute("ALTER TABLE entries RENAME TO entries_before_scopes")
    db.execute(ENTRIES)
    names = ", ".join(columns)
    db.execute(f"INSERT INTO entries({names}) SELECT {names} FROM entries_before_scopes")
    db.execute("DROP TABLE entries_before_scopes")  # and its indexes: SCHEMA makes new ones
    return True
