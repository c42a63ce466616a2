//! End-to-end tests of `handoffctl`.
