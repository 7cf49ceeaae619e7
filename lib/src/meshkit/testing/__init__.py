"""Test helpers shared by every member's tests (pytest plugin, root marker handling)."""
