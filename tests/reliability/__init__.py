"""Reliability and security suite: fault injection, fuzzing, secret and transport hygiene."""
