"""Versioned migrations: each is applied once, in order, inside one transaction.

Times are unix seconds (REAL); money is INTEGER minor units; secrets are vault-encrypted BLOBs.
"""

MIGRATIONS: tuple[str, ...] = (
    # 1: shops, deliveries, the job queue, the capture ledger, side effects, outbox, audit trail
    """
    CREATE TABLE shops (
        id TEXT PRIMARY KEY,
        platform TEXT NOT NULL,
        name TEXT NOT NULL,
        klarna_region TEXT NOT NULL,
        klarna_environment TEXT NOT NULL,
        klarna_username TEXT NOT NULL,
        klarna_password BLOB NOT NULL,
        status_url TEXT,
        options TEXT NOT NULL DEFAULT '{}',
        enabled INTEGER NOT NULL DEFAULT 1,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE webhook_secrets (
        id INTEGER PRIMARY KEY,
        shop_id TEXT NOT NULL REFERENCES shops (id) ON DELETE CASCADE,
        secret BLOB NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL
    );
    CREATE INDEX webhook_secrets_shop ON webhook_secrets (shop_id);
    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY,
        shop_id TEXT NOT NULL,
        delivery_id TEXT NOT NULL,
        event_type TEXT,
        fulfillment_id TEXT,
        body BLOB NOT NULL,
        status TEXT NOT NULL,
        reason TEXT,
        received_at REAL NOT NULL,
        UNIQUE (shop_id, delivery_id)
    );
    CREATE INDEX deliveries_fulfillment ON deliveries (shop_id, fulfillment_id, id);
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        shop_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        due_at REAL NOT NULL,
        lease_owner TEXT,
        lease_until REAL,
        rerun INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        UNIQUE (shop_id, kind, key)
    );
    CREATE INDEX jobs_due ON jobs (due_at) WHERE state = 'queued';
    CREATE INDEX jobs_lease ON jobs (lease_until) WHERE state = 'running';
    CREATE INDEX jobs_state ON jobs (state, updated_at);
    CREATE TABLE captures (
        shop_id TEXT NOT NULL,
        fulfillment_id TEXT NOT NULL,
        order_id TEXT NOT NULL,
        klarna_order_id TEXT NOT NULL,
        currency TEXT NOT NULL,
        state TEXT NOT NULL,
        idempotency_key TEXT,
        planned_at REAL,
        request BLOB,
        captured_amount INTEGER,
        capture_id TEXT,
        klarna_reference TEXT,
        captured_at REAL,
        shipping_info BLOB NOT NULL DEFAULT '[]',
        send_out_done INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (shop_id, fulfillment_id)
    );
    CREATE TABLE operations (
        id INTEGER PRIMARY KEY,
        shop_id TEXT NOT NULL,
        fulfillment_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        body BLOB NOT NULL,
        state TEXT NOT NULL,
        created_at REAL NOT NULL,
        done_at REAL
    );
    CREATE INDEX operations_fulfillment ON operations (shop_id, fulfillment_id, kind, state);
    CREATE TABLE callbacks (
        id INTEGER PRIMARY KEY,
        shop_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        webhook_id TEXT NOT NULL UNIQUE,
        payload BLOB NOT NULL,
        created_at REAL NOT NULL,
        sent_at REAL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        shop_id TEXT NOT NULL,
        fulfillment_id TEXT,
        job_id INTEGER,
        at REAL NOT NULL,
        step TEXT NOT NULL,
        outcome TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX audit_fulfillment ON audit (shop_id, fulfillment_id, id);
    """,
    # 2: the settings page: one-time sign-in links, when the Klarna password was set, the Klarna
    # order's reference on the ledger, and an index for a shop's recent shipments
    """
    CREATE TABLE admin_links (
        nonce TEXT PRIMARY KEY,
        shop_id TEXT NOT NULL,
        used_at REAL NOT NULL
    );
    ALTER TABLE shops ADD COLUMN klarna_password_set_at REAL;
    UPDATE shops SET klarna_password_set_at = created_at;
    CREATE INDEX jobs_shop_activity ON jobs (shop_id, kind, updated_at, id);
    """,
    # 3: storefront apps (Shopify): a shop's storefront domain (unique per platform) and its sealed
    # API token; the order of each delivery and capture, for write-backs and compliance requests;
    # whether a capture completed its order; compliance requests and the report each produced
    """
    ALTER TABLE shops ADD COLUMN shop_domain TEXT;
    ALTER TABLE shops ADD COLUMN platform_token BLOB;
    CREATE UNIQUE INDEX shops_domain ON shops (platform, shop_domain)
        WHERE shop_domain IS NOT NULL;
    ALTER TABLE deliveries ADD COLUMN order_id TEXT;
    CREATE INDEX deliveries_order ON deliveries (shop_id, order_id) WHERE order_id IS NOT NULL;
    ALTER TABLE captures ADD COLUMN completes_order INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX captures_order ON captures (shop_id, order_id);
    CREATE TABLE compliance_requests (
        id INTEGER PRIMARY KEY,
        platform TEXT NOT NULL,
        shop_domain TEXT NOT NULL,
        topic TEXT NOT NULL,
        webhook_id TEXT NOT NULL,
        report TEXT NOT NULL,
        received_at REAL NOT NULL,
        UNIQUE (platform, webhook_id)
    );
    """,
    # 4: settings sessions kept on the server, so that signing out, uninstalling or removing a
    # shop ends them in every process; one-time tokens (a BigCommerce signed_payload_jwt), each
    # remembered until it expires
    """
    CREATE TABLE admin_sessions (
        sid TEXT PRIMARY KEY,
        shop_id TEXT NOT NULL REFERENCES shops (id) ON DELETE CASCADE,
        expires_at REAL NOT NULL
    );
    CREATE INDEX admin_sessions_shop ON admin_sessions (shop_id);
    CREATE INDEX admin_sessions_expiry ON admin_sessions (expires_at);
    CREATE TABLE used_tokens (
        token TEXT PRIMARY KEY,
        expires_at REAL NOT NULL
    );
    CREATE INDEX used_tokens_expiry ON used_tokens (expires_at);
    """,
    # 5: fair claiming (issue 14): a shop's queued jobs of a kind, oldest first, so that a claim
    # finds each shop's next job without walking another shop's backlog; and a shop's running
    # jobs of a kind, counted against the per-shop cap. (jobs_due stays: the oldest due job is
    # taken at once when its shop has none of its kind running.)
    """
    CREATE INDEX jobs_queued_shop ON jobs (kind, shop_id, due_at) WHERE state = 'queued';
    CREATE INDEX jobs_running_shop ON jobs (shop_id, kind) WHERE state = 'running';
    """,
    # 6: crash recovery (issue 15): every process that claims jobs registers here and renews its
    # heartbeat; a running job whose owner is no longer `alive_until` now (missed beats, or found
    # dead) is claimable at once, found from its owner's row (workers_alive, then the owner's
    # running jobs). No column is added to jobs: measured, a wider row estimate turned the generic
    # claim plan that PostgreSQL makes on a short queue from jobs_queued_shop to jobs_due and a
    # sort of the queue.
    """
    CREATE TABLE workers (
        owner TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        pid_scope TEXT NOT NULL,
        started_at REAL NOT NULL,
        heartbeat_at REAL NOT NULL,
        alive_until REAL NOT NULL
    );
    CREATE INDEX workers_alive ON workers (alive_until);
    CREATE INDEX jobs_running_owner ON jobs (lease_owner) WHERE state = 'running';
    """,
    # 7: shipments waiting on a shop's Klarna credentials (issue 15): a waiting job's state is
    # 'waiting' (never claimed, no attempt burned); what it waits on and since when are kept beside
    # it, by shop, so that saving the credentials releases them in one statement and the pages
    # count them cheaply. (Not as columns of jobs: a wider jobs row changes PostgreSQL's estimates,
    # and so the plan of the claim.) The Klarna authorization's expiry goes on the ledger. Jobs
    # that waited or died for missing or refused credentials before this (KLARNA_NOT_CONFIGURED;
    # a Klarna 401, UNAUTHORIZED) wait from now on.
    """
    CREATE TABLE job_waits (
        job_id INTEGER PRIMARY KEY,
        shop_id TEXT NOT NULL,
        waits_for TEXT NOT NULL,
        since REAL NOT NULL
    );
    CREATE INDEX job_waits_shop ON job_waits (shop_id, waits_for);
    ALTER TABLE captures ADD COLUMN authorization_expires_at REAL;
    INSERT INTO job_waits (job_id, shop_id, waits_for, since)
        SELECT id, shop_id, 'klarna_credentials', updated_at FROM jobs
        WHERE kind = 'fulfillment' AND state IN ('queued', 'dead') AND (
            last_error LIKE '%"error_code":"KLARNA_NOT_CONFIGURED"%'
            OR (last_error LIKE '%"error_code":"UNAUTHORIZED"%'
                AND last_error LIKE '%"status":401%'));
    UPDATE jobs SET state = 'waiting' WHERE id IN (SELECT job_id FROM job_waits);
    """,
    # 8: retention (plugin/retention.py): when a delivery's body was emptied; what each pruning
    # step walks, oldest first, so that a batch reads only the rows it removes: bodies still
    # kept (partial: a delivery leaves it when its body goes), emptied deliveries (partial: none
    # at ingest), the ledger, the audit trail, privacy requests and used sign-in links by age.
    # (Whether a shipment's job may still run, SQLite looks up in the unique index: one probe.)
    """
    ALTER TABLE deliveries ADD COLUMN pruned_at REAL;
    CREATE INDEX deliveries_body_kept ON deliveries (received_at) WHERE pruned_at IS NULL;
    CREATE INDEX deliveries_pruned ON deliveries (pruned_at) WHERE pruned_at IS NOT NULL;
    CREATE INDEX captures_updated ON captures (updated_at);
    CREATE INDEX audit_at ON audit (at);
    CREATE INDEX compliance_requests_received ON compliance_requests (received_at);
    CREATE INDEX admin_links_used ON admin_links (used_at);
    """,
    # 9: the order's life at Klarna after its captures (issue 18): each storefront order as known
    # at Klarna (open, cancelled or closed; when its authorization runs out and when that was last
    # read), and each life-cycle call on it (refund, cancellation, release, extension, merchant
    # references) under the key that makes it happen once, stored with its idempotency key and
    # request before it is sent. The keep-alive finds the open orders expiring soonest along
    # orders_expiring (of every shop) or orders_shop_expiring (of one), an authorization not read
    # yet first (as 0): one range of one index, however many orders there are. Retention walks
    # both tables by age.
    """
    CREATE TABLE orders (
        shop_id TEXT NOT NULL,
        order_id TEXT NOT NULL,
        klarna_order_id TEXT NOT NULL,
        currency TEXT NOT NULL,
        state TEXT NOT NULL,
        authorization_expires_at REAL,
        checked_at REAL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (shop_id, order_id)
    );
    CREATE INDEX orders_expiring ON orders
        (coalesce(authorization_expires_at, 0), shop_id, order_id) WHERE state = 'open';
    CREATE INDEX orders_shop_expiring ON orders
        (shop_id, coalesce(authorization_expires_at, 0), order_id) WHERE state = 'open';
    CREATE INDEX orders_updated ON orders (updated_at);
    CREATE TABLE order_operations (
        shop_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        order_id TEXT NOT NULL,
        klarna_order_id TEXT NOT NULL,
        currency TEXT NOT NULL,
        state TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        request BLOB NOT NULL,
        amount INTEGER,
        result TEXT,
        error TEXT,
        planned_at REAL NOT NULL,
        done_at REAL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (shop_id, kind, key)
    );
    CREATE INDEX order_operations_order ON order_operations (shop_id, order_id);
    CREATE INDEX order_operations_updated ON order_operations (updated_at);
    """,
    # 10: the merchant's own way in (issue 19): a shop's email address, in its normal form
    # (plugin/emails.py), found by index when a sign-in link is asked for; the sign-in requests
    # counted per address and per client, in windows that end at `reset_at` (so that the limits
    # hold across processes; expired windows go by index); and each shop's last failure alert,
    # whose time is also where the next one starts, so that one process sends it.
    """
    ALTER TABLE shops ADD COLUMN email TEXT;
    CREATE INDEX shops_email ON shops (email) WHERE email IS NOT NULL;
    CREATE TABLE rate_limits (
        key TEXT PRIMARY KEY,
        hits INTEGER NOT NULL,
        reset_at REAL NOT NULL
    );
    CREATE INDEX rate_limits_reset ON rate_limits (reset_at);
    CREATE TABLE failure_alerts (
        shop_id TEXT PRIMARY KEY,
        sent_at REAL NOT NULL
    );
    """,
    # 11: the activity view, reviewed (issue 19): a shop's dead letters along their own partial
    # index, newest first, not along jobs_state, the dead letters of every shop; and on each
    # ledger row what the list and the export show without asking Klarna: the storefront's order
    # number (searched within the view's bounded look, so no index) and the Klarna order's
    # amount when the capture was planned (to mark a partial capture).
    """
    CREATE INDEX jobs_shop_dead ON jobs (shop_id, updated_at, id) WHERE state = 'dead';
    ALTER TABLE captures ADD COLUMN order_number TEXT;
    ALTER TABLE captures ADD COLUMN order_amount INTEGER;
    """,
    # 12: what each shop's failure alerts listed, by what and when it failed, so that the next
    # alert can look back over a margin (a failure stamped by a clock a little behind, or
    # committed after the pass read) without listing it twice; kept a few days (pruned by the
    # alert that records more).
    """
    CREATE TABLE alerted_failures (
        shop_id TEXT NOT NULL,
        subject TEXT NOT NULL,
        id TEXT NOT NULL,
        what TEXT NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (shop_id, subject, id, what, at)
    );
    """,
)
