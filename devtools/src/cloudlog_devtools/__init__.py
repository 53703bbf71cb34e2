"""Development only: the embedded AWS endpoint, the strict CloudWatch proxy, ``cloudlog dev``."""
