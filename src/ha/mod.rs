//! ha (in progress)
