"""Leaderboards (terminal now; the static HTML report follows)."""
