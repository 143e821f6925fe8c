-- The order component's tables, in the common dialect of SQLite and PostgreSQL. Money is
-- integer cents, times are microseconds since the Unix epoch (rendered as RFC 3339 by the
-- component). Statuses: PENDING → PAID | PAYMENT_FAILED | CANCELLED.
create table orders (
    id text primary key,
    user_id text not null,
    status text not null,
    total_cents bigint not null check (total_cents >= 0),
    payment_method text not null,
    created_at bigint not null,
    updated_at bigint not null
);
-- A user's orders, newest first.
create index orders_user_idx on orders (user_id, created_at);

-- The lines of an order, with the name and the price the catalog reserved them at.
create table order_items (
    order_id text not null references orders (id),
    line bigint not null,
    product_id text not null,
    name text not null,
    quantity bigint not null check (quantity > 0),
    unit_price_cents bigint not null check (unit_price_cents >= 0),
    primary key (order_id, line)
);
