//! Triggers: what makes a component run. HTTP requests for now; events come with messaging.

pub mod http;
