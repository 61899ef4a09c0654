"""In-context alignment: strategies that change what the model is given, not its weights."""

from alignlab.icl.base import Answer, Backend, Cost, Sampling, Strategy
from alignlab.icl.stack import STRATEGIES, Stack, build_stack, build_strategy, load_stack

__all__ = [
    "STRATEGIES",
    "Answer",
    "Backend",
    "Cost",
    "Sampling",
    "Stack",
    "Strategy",
    "build_stack",
    "build_strategy",
    "load_stack",
]
