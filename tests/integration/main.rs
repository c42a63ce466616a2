//! The one integration-test binary of `handoff`: a module per scenario
//! family.

mod registry;
