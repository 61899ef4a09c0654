"""Reward callables for the strategy tests (`path/to/rewards.py:NAME`)."""


def length(prompt, response):
    return float(len(response))
