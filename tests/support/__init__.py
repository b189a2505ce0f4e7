"""Shared test helpers: free ports, subprocess servers with readiness polling, deadlines (never bare sleeps)."""
