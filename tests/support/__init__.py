"""Test helpers shared by several test folders: backend fixtures (registered for the
whole suite by tests/conftest.py) and in-process apps with real tokens."""
