//! The HTTP surface: route parsing, handlers, bodies and the connection loop.

pub mod body;
pub mod error;
pub mod front;
pub mod handlers;
pub mod head;
pub mod limits;
pub mod replay;
pub mod routes;
pub mod send_timeout;
pub mod server;
pub mod service;
pub mod state;
pub mod status;
pub mod upload;
pub mod zerocopy;

#[cfg(test)]
mod proptests;
