"""Tasks: a ``params/<task>.yaml`` file validated into a frozen :class:`~helpers.tasks.spec.TaskSpec`
(:mod:`.spec`, errors that name the file, field, value and fix), the prompts it makes for a tokenizer
(:mod:`.prompts`: :class:`~helpers.tasks.prompts.PromptSet`, word positions, templates), and the task's answer
metric on final-position logits (:mod:`.metrics`). Nothing here loads a model."""
