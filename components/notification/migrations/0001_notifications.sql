-- One notification per handled event (the event id makes redeliveries harmless).
create table notifications (
    id text primary key,
    event_id text not null unique,
    user_id text not null,
    kind text not null,
    title text not null,
    body text not null,
    data text not null,
    read_at bigint,
    created_at bigint not null
);
create index notifications_by_user on notifications (user_id, created_at);
