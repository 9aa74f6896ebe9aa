//! transfer (in progress)
