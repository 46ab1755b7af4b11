//! Helpers for tests that check generated pages in a real browser: a static file server on
//! loopback and a small W3C WebDriver client driving headless Chromium; for the arena tests, a
//! small bench folder and a client for the arena's API.
//!
//! Each test binary compiles this module on its own and uses part of it.
#![allow(dead_code)]

pub mod arena;
pub mod static_server;
pub mod webdriver;
