"""Widgets of the studio, grouped by area."""
