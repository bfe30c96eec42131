"""Alerts when TWS / IB Gateway is unusable: one text, two routes (flow hooks, server automations)."""
