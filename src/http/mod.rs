//! The HTTP surface: route parsing, handlers, bodies and the connection loop.

pub mod body;
pub mod handlers;
pub mod probe;
pub mod routes;
pub mod server;

#[cfg(test)]
mod proptests;
