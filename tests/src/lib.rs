//! Shared helpers live in trainyard-testkit; this package only holds the end-to-end tests.
