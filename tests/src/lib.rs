//! End-to-end test helpers (the end-to-end suites arrive with the server).
