//! `fleet serve`: the controller as a service (being built). So far the credentials of its
//! users and API tokens (`auth.rs`), which `fleet user` and `fleet token` make.

pub mod auth;
