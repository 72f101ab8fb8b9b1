"""Capacity and cost: a day of traffic simulated against the HPA, and $/1M tokens from cited prices and
measured throughput (notebook 07).
"""
