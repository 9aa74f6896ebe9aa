//! The suites against a real Home Assistant (see `../shared/real-ha/up.sh` and `scripts/real-ha`):
//! `ha_real` checks the client against a running instance, `e2e` runs the hapull binary under fire.
//! They need a running instance and are ignored otherwise.

mod e2e;
mod ha_real;
