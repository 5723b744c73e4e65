"""The SQLite schema: versioned migrations, applied when the store opens."""

from __future__ import annotations

import sqlite3

# Versioned migrations: index i brings the schema to version i + 1. Never edit a shipped one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE tenants (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL DEFAULT 'active',
        created_at REAL NOT NULL
    );
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        key_hash TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        models TEXT,
        expires_at REAL,
        revoked_at REAL,
        created_at REAL NOT NULL
    );
    CREATE INDEX api_keys_tenant ON api_keys(tenant_id);
    CREATE TABLE usage_ledger (
        request_id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        key_id TEXT NOT NULL,
        model TEXT NOT NULL,
        api TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        outcome TEXT NOT NULL,
        http_status INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL NOT NULL,
        ttft_s REAL,
        error_code TEXT
    );
    CREATE INDEX usage_ledger_tenant_time ON usage_ledger(tenant_id, started_at);
    """,
    """
    ALTER TABLE usage_ledger ADD COLUMN cost_pico INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE usage_ledger ADD COLUMN price_version TEXT;
    CREATE INDEX usage_ledger_time ON usage_ledger(started_at);
    """,
    """
    ALTER TABLE tenants ADD COLUMN limits TEXT;
    ALTER TABLE api_keys ADD COLUMN limits TEXT;
    """,
    # Metering, part 2: cached prompt tokens, choices (the engine counts the prompt once per choice),
    # the service tier, adjustment rows, the usage events' order, and the engines' own counters.
    # engine_counters: each engine's last counted sample (the cursor every replica advances) and
    # what it counted since its last quiet point (``open_*``); engine_usage: counter deltas per
    # engine and UTC hour; reconcile_periods: the tokens between two quiet points, and once settled
    # the ledger's sums, the adjustments made and the negative residual carried on (gateway/reconcile).
    """
    ALTER TABLE usage_ledger ADD COLUMN cached_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE usage_ledger ADD COLUMN choices INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE usage_ledger ADD COLUMN service_tier TEXT;
    ALTER TABLE usage_ledger ADD COLUMN adjusts TEXT;
    ALTER TABLE usage_ledger ADD COLUMN seq INTEGER;
    UPDATE usage_ledger SET seq = rowid;
    CREATE UNIQUE INDEX usage_ledger_seq ON usage_ledger(seq);
    CREATE INDEX usage_ledger_endpoint_end ON usage_ledger(endpoint, ended_at);
    CREATE TABLE engine_counters (
        engine TEXT PRIMARY KEY,
        incarnation REAL NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        generation_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL,
        prefix_hits INTEGER NOT NULL,
        prefix_queries INTEGER NOT NULL,
        sampled_at REAL NOT NULL,
        quiet_at REAL,
        open_prompt_tokens INTEGER NOT NULL DEFAULT 0,
        open_generation_tokens INTEGER NOT NULL DEFAULT 0,
        open_cached_tokens INTEGER NOT NULL DEFAULT 0,
        open_resets INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE engine_usage (
        engine TEXT NOT NULL,
        hour REAL NOT NULL,
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        generation_tokens INTEGER NOT NULL DEFAULT 0,
        cached_tokens INTEGER NOT NULL DEFAULT 0,
        prefix_hits INTEGER NOT NULL DEFAULT 0,
        prefix_queries INTEGER NOT NULL DEFAULT 0,
        resets INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (engine, hour)
    );
    CREATE TABLE reconcile_periods (
        engine TEXT NOT NULL,
        start_at REAL NOT NULL,
        end_at REAL NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        generation_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL,
        resets INTEGER NOT NULL DEFAULT 0,
        settled_at REAL,
        ledger_prompt_tokens INTEGER,
        ledger_generation_tokens INTEGER,
        ledger_cached_tokens INTEGER,
        adjusted_prompt_tokens INTEGER,
        adjusted_generation_tokens INTEGER,
        carry_prompt_tokens INTEGER,
        carry_generation_tokens INTEGER,
        PRIMARY KEY (engine, end_at)
    );
    CREATE INDEX reconcile_periods_open ON reconcile_periods (end_at) WHERE settled_at IS NULL;
    CREATE TABLE outbox_cursors (
        name TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
]


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema to the latest version, in one transaction that holds the write lock from
    its first read: workers starting together migrate once, the others wait and find it done."""
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        current = row[0] or 0
        for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
            for statement in filter(str.strip, script.split(";")):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
