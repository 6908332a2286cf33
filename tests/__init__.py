"""The test suite: a regular package, so that a dependency that installs a top-level `tests` package (graypy 2.1.0 does) cannot shadow it."""
