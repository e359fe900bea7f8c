"""The fuzzers' fixtures: the integration tests' broker (``tests/conftest.py``)."""
