-- One row per event handled (idempotent on the event id) and per dead letter seen.
create table received (
    event_id text primary key,
    note_id text not null,
    delivery integer not null
);
create table dead_letters (
    message_id text primary key,
    subject text not null,
    reason text not null
);
