"""Shared fixtures. Warnings are errors (pyproject), so leaked sessions fail tests."""
