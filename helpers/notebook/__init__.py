"""What a template calls before its analyses: the session (:mod:`.session`: the validated task, its model,
its prompts, the header and the figure renderer) and the Colab set-up cell (:mod:`.colab`)."""
