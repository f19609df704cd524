"""Running the templates: the command line (:mod:`.cli`; ``python -m helpers.run``), the kernel the
templates of a run share (:mod:`.kernel`), the output folders with their locks and earlier results
(:mod:`.outputs`) and the offline HTML pages (:mod:`.export`)."""
