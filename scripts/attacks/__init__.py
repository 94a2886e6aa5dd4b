"""Hostile requests against a running server, and what they cost it (`make attack`,
tests/server/test_attacks.py): ``wire`` builds them byte by byte, ``catalog`` lists them,
``watch`` measures health latency, RSS and file descriptors while they run."""
