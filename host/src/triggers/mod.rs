//! Triggers: what makes a component run — an HTTP request or a delivered message.

pub mod event;
pub mod first_look;
pub mod http;
