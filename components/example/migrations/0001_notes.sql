-- Notes written over HTTP; the common dialect of SQLite and PostgreSQL.
create table notes (
    id text primary key,
    body text not null,
    created_at bigint not null
);
