"""AI feedback: what the label-free pipelines share (Constitutional AI, RLAIF, self-rewarding,
online DPO, ALMoST; their recipes are in `alignlab.recipes`).

    samples = sample_k(model, tokenizer, prompts, k=4)          # K responses per prompt
    comparisons = judge_comparisons(judge, prompts, samples)    # every pair, P(a preferred)
    comparisons = reward_comparisons(reward_fn, prompts, samples)
    rows = comparisons.all_pairs()          # TRL preference rows + chosen_probability
    rows = comparisons.best_vs_worst()      # one pair per prompt (Copeland ranks)
    constitution = load_constitution()      # the shipped HHH principles, or a YAML of yours
"""
