"""The analyses, one module per template's subject: direct logit attribution (:mod:`.dla`), head
ablation (:mod:`.ablation`), role scores on repeated tokens (:mod:`.head_functions`), the heads the earlier
notebooks found important (:mod:`.important_heads`), copy scores (:mod:`.copy_scores`), MLP neurons
(:mod:`.neurons`), update vectors (:mod:`.vectors`) and the comparison across tasks (:mod:`.compare`);
activation patching in :mod:`.patching` and circuits in :mod:`.circuits`. :mod:`.heads` (a head's score,
rankings) and :mod:`.stats` (intervals over prompts) are shared by all of them. Every ``compute_*`` returns
a small frozen result that figures, results.json and tests read alike."""
