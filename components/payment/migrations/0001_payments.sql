-- The payment component's tables, in the common dialect of SQLite and PostgreSQL. Money is
-- integer cents, times are microseconds since the Unix epoch.

-- One payment per order: the unique order_id is what makes a charge happen once even when
-- order.created is delivered twice (or two copies race).
create table payments (
    id text primary key,
    order_id text not null unique,
    user_id text not null,
    amount_cents bigint not null check (amount_cents >= 0),
    method text not null,
    status text not null,
    reason text,
    created_at bigint not null
);

-- The simulated gateway's own record: one row per charge it performed, keyed by the
-- idempotency key the component sends (the order id). A repeated call with the same key
-- charges nothing and answers the first outcome (counted in `replays`), as real gateways do.
-- It is written outside the payment's transaction, as an external system would be.
create table gateway_calls (
    idempotency_key text primary key,
    order_id text not null,
    amount_cents bigint not null,
    method text not null,
    outcome text not null,
    reason text,
    replays bigint not null default 0,
    created_at bigint not null
);

-- Every order.created event handled, by event id: what it led to (`charged` or `duplicate`)
-- and in which delivery of the message.
create table handled_events (
    event_id text primary key,
    order_id text not null,
    outcome text not null,
    delivery bigint not null,
    handled_at bigint not null
);

-- Test support for the test-only payment method `tok_trap_once`: an order is recorded here
-- (committed) the first time it is seen, just before the component traps on purpose.
create table trap_marks (
    order_id text primary key,
    created_at bigint not null
);
