"""The lab: a simulated world with a programmatic gold reward for helpful, honest and
harmless (HHH) behaviour, simulated annotators, and the corpora a tiny base model is
pretrained and aligned on. Core alignlab code never imports this package; it is only a
data source, a reward function and an evaluator. See docs/lab.md.
"""

from alignlab.lab.annotators import (
    Annotator,
    LabelSet,
    agreement_with_gold,
    fit_bradley_terry,
    label_pairs,
    label_responses,
)
from alignlab.lab.corpus import (
    TranscriptMix,
    preference_pairs,
    pretraining_corpus,
    rl_prompts,
    sample_candidate,
    sft_demonstrations,
)
from alignlab.lab.export import export_datasets, write_jsonl_atomic
from alignlab.lab.gold import FAMILIES, FAMILY_AXIS, GoldScore, Prompt, gold_score, ideal_response
from alignlab.lab.judge import claims_ignorance, is_refusal
from alignlab.lab.knowledge import Entity, Fact, KnowledgeBase
from alignlab.lab.policies import (
    TRIVIAL_POLICIES,
    ImperfectionRates,
    bad_response,
    imperfect_response,
)
from alignlab.lab.world import DEFAULT_FAMILY_WEIGHTS, SPLITS, LabWorld, SplitPools

__all__ = [
    "DEFAULT_FAMILY_WEIGHTS",
    "FAMILIES",
    "FAMILY_AXIS",
    "SPLITS",
    "TRIVIAL_POLICIES",
    "Annotator",
    "Entity",
    "Fact",
    "GoldScore",
    "ImperfectionRates",
    "KnowledgeBase",
    "LabWorld",
    "LabelSet",
    "Prompt",
    "SplitPools",
    "TranscriptMix",
    "agreement_with_gold",
    "bad_response",
    "claims_ignorance",
    "export_datasets",
    "fit_bradley_terry",
    "gold_score",
    "ideal_response",
    "imperfect_response",
    "is_refusal",
    "label_pairs",
    "label_responses",
    "preference_pairs",
    "pretraining_corpus",
    "rl_prompts",
    "sample_candidate",
    "sft_demonstrations",
    "write_jsonl_atomic",
]
