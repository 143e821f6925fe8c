-- Accounts, in the common dialect of SQLite and PostgreSQL. Times are microseconds since the
-- Unix epoch (UTC). `email` is stored trimmed and lowercased, so a plain index makes it unique
-- regardless of case; the index covers live accounts only, so the address of a deleted
-- account (soft delete: `deleted_at` set) can register again.
create table users (
    id text primary key,
    email text not null,
    password_hash text not null,
    name text not null,
    phone text,
    role text not null default 'USER' check (role in ('USER', 'ADMIN')),
    created_at bigint not null,
    updated_at bigint not null,
    deleted_at bigint
);
create unique index users_email_live on users (email) where deleted_at is null;
create index users_created_at on users (created_at);
