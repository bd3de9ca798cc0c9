"""Alerts: the alert destinations resource and the sensors that send check and run alerts."""
