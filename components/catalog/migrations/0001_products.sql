-- The catalog's tables, in the common dialect of SQLite and PostgreSQL. Money is integer
-- cents, times are microseconds since the Unix epoch (rendered as RFC 3339 by the component),
-- images a JSON array of strings.
create table products (
    id text primary key,
    name text not null,
    description text not null default '',
    price_cents bigint not null check (price_cents > 0),
    sku text not null unique,
    stock bigint not null check (stock >= 0),
    images text not null default '[]',
    category text not null default '',
    created_at bigint not null,
    updated_at bigint not null
);
-- Lists: newest first (ties by id), optionally one category.
create index products_created_idx on products (created_at, id);
create index products_category_idx on products (category, created_at);

-- Stock held for orders: one row per line of a reservation, with what the line cost when it
-- was reserved, so that replaying a reservation answers the same thing. `released` flips once.
create table reservations (
    reservation_id text not null,
    line bigint not null,
    product_id text not null,
    name text not null,
    sku text not null,
    quantity bigint not null check (quantity > 0),
    unit_price bigint not null,
    released boolean not null default false,
    created_at bigint not null,
    primary key (reservation_id, line)
);
create index reservations_product_idx on reservations (product_id);
