//! Script tests (filled in below).
