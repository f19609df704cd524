"""Figures: a plotly figure or table for every analysis result, one module per analysis (:mod:`.dla`,
:mod:`.patching`, :mod:`.head_functions`, :mod:`.copy_scores`, :mod:`.circuits`, :mod:`.discovery`,
:mod:`.neurons`, :mod:`.vectors`, :mod:`.compare`) on the per-head building blocks of :mod:`.heads`; the
static PNG drawn for each (:mod:`.static`, and :mod:`.images` for the runner, which imports no torch), and
how a figure or attention view is shown in a notebook, offline and explicitly (:mod:`.viz`).

Every ``plot_*`` takes a result dataclass and returns a ``plotly.graph_objects.Figure`` without showing
it. Signed quantities use a diverging red-blue scale centred on zero (blue = towards the correct
answer), heads are named ``L{layer}H{head}``, and token axes label each position ``"{i}: {token}"``
so repeated tokens stay distinct.
"""
