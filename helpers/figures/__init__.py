"""Figures: a plotly figure for every analysis result (:mod:`.plotting`), the static PNG drawn for each
(:mod:`.static`, and :mod:`.images` for the runner, which imports no torch), and how a figure or attention
view is shown in a notebook, offline and explicitly (:mod:`.viz`)."""
